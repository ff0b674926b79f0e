# The Debian package (`cpack -G DEB` in the release preset's build, or scripts/package): the
# daemon, its CLI, units, snippets and config, plus every other install() rule except the
# client library's `dev` component. Needs the release preset's layout (prefix /usr,
# /lib/systemd/system, /etc/stereos-hostd).
execute_process(COMMAND dpkg --print-architecture
    OUTPUT_VARIABLE STEREOS_DEB_ARCH OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT STEREOS_DEB_ARCH)
    set(STEREOS_DEB_ARCH amd64)
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME stereos-hostd)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "StereOS maintainers <stereos@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "StereOS host daemon: guest links, state, provisioning, local API")
set(CPACK_PACKAGE_DESCRIPTION
    "stereos-hostd keeps one connection to each StereOS guest VM's stereosd, tracks each\n\
guest's state, provisions guests and serves a local HTTP API on a unix socket.\n\
stereosctl is its command-line client.")
# Staged with DESTDIR, so the units name /usr/bin/stereos-hostd, not the staging directory.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_STRIP_FILES ON)

# One package from every component but `dev` (headers and static libraries for embedding).
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_GROUPING ALL_COMPONENTS_IN_ONE)
get_cmake_property(STEREOS_COMPONENTS COMPONENTS)
list(REMOVE_ITEM STEREOS_COMPONENTS dev)
set(CPACK_COMPONENTS_ALL ${STEREOS_COMPONENTS})

set(CPACK_DEBIAN_PACKAGE_NAME stereos-hostd)
set(CPACK_DEBIAN_FILE_NAME stereos-hostd_${PROJECT_VERSION}_${STEREOS_DEB_ARCH}.deb)
set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE ${STEREOS_DEB_ARCH})
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# systemd-sysusers and systemd-tmpfiles in postinst; deb-systemd-helper enables the socket;
# procps for the service's ExecReload=/bin/kill (not in a minimal Debian).
set(CPACK_DEBIAN_PACKAGE_DEPENDS "systemd, init-system-helpers, procps")
set(STEREOS_DEB_SCRIPTS ${PROJECT_SOURCE_DIR}/scripts/debian)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${STEREOS_DEB_SCRIPTS}/postinst ${STEREOS_DEB_SCRIPTS}/prerm ${STEREOS_DEB_SCRIPTS}/postrm
    ${STEREOS_DEB_SCRIPTS}/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_PACKAGE_FILE_NAME stereos-hostd_${PROJECT_VERSION}_${STEREOS_DEB_ARCH})
set(STEREOS_DEB_FILE ${PROJECT_BINARY_DIR}/${CPACK_DEBIAN_FILE_NAME})

include(CPack)
