# The client library: static libraries and their headers, installed in the `dev` component with
# an exported CMake package (find_package(stereos CONFIG) -> stereos::NAME) and stereos.pc.

set(STEREOS_CMAKE_PACKAGE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/stereos)
set(STEREOS_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR})

# stereos_install_library(TARGET NAME): installs TARGET as stereos::NAME and the *.hpp of the
# folder that defines it under include/stereos/NAME/, the path the source tree includes too
# (<stereos/link/guest_link.hpp>). Call it after the target's target_include_directories(), e.g.
#   stereos_install_library(stereos_link link)      -> stereos::link, include/stereos/link/
function(stereos_install_library target name)
    set_target_properties(${target} PROPERTIES EXPORT_NAME ${name})
    target_compile_features(${target} INTERFACE cxx_std_20)
    # Source-tree include paths hold for the build only; installed, the headers live here.
    get_target_property(includes ${target} INTERFACE_INCLUDE_DIRECTORIES)
    set(rewritten)
    foreach(dir IN LISTS includes)
        if(dir MATCHES "^\\$<")
            list(APPEND rewritten "${dir}")
        else()
            list(APPEND rewritten "$<BUILD_INTERFACE:${dir}>")
        endif()
    endforeach()
    list(APPEND rewritten "$<INSTALL_INTERFACE:${STEREOS_INSTALL_INCLUDEDIR}>")
    set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${rewritten}")

    install(TARGETS ${target} EXPORT stereosTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
    get_target_property(source_dir ${target} SOURCE_DIR)
    file(GLOB headers CONFIGURE_DEPENDS ${source_dir}/*.hpp)
    install(FILES ${headers} DESTINATION ${STEREOS_INSTALL_INCLUDEDIR}/stereos/${name} COMPONENT dev)
    # pkg-config lists the archives: a header-only library has none.
    get_target_property(type ${target} TYPE)
    if(NOT type STREQUAL "INTERFACE_LIBRARY")
        set_property(GLOBAL APPEND PROPERTY STEREOS_INSTALLED_LIBRARIES ${target})
    endif()
endfunction()

# Called once, after every stereos_install_library(): the package files themselves.
function(stereos_install_package_files)
    # Private build settings (warnings, sanitizers) reach the export only as link-only usage.
    install(TARGETS stereos_build_flags EXPORT stereosTargets COMPONENT dev)
    install(EXPORT stereosTargets NAMESPACE stereos:: DESTINATION ${STEREOS_CMAKE_PACKAGE_DIR}
        COMPONENT dev)

    include(CMakePackageConfigHelpers)
    set(dir ${PROJECT_SOURCE_DIR}/scripts/cmake)
    configure_package_config_file(${dir}/stereosConfig.cmake.in
        ${PROJECT_BINARY_DIR}/stereosConfig.cmake
        INSTALL_DESTINATION ${STEREOS_CMAKE_PACKAGE_DIR})
    # No stable API yet: a 0.x consumer needs the same minor version.
    write_basic_package_version_file(${PROJECT_BINARY_DIR}/stereosConfigVersion.cmake
        COMPATIBILITY SameMinorVersion)
    install(FILES ${PROJECT_BINARY_DIR}/stereosConfig.cmake
                  ${PROJECT_BINARY_DIR}/stereosConfigVersion.cmake
        DESTINATION ${STEREOS_CMAKE_PACKAGE_DIR} COMPONENT dev)

    # pkg-config: every library, dependents first, as a static link needs them.
    get_property(targets GLOBAL PROPERTY STEREOS_INSTALLED_LIBRARIES)
    list(REVERSE targets)
    set(STEREOS_PC_LIBS)
    foreach(target IN LISTS targets)
        string(APPEND STEREOS_PC_LIBS " -l${target}")
    endforeach()
    string(REGEX REPLACE "[^/]+" ".." STEREOS_PC_UP "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
    configure_file(${dir}/stereos.pc.in ${PROJECT_BINARY_DIR}/stereos.pc @ONLY)
    install(FILES ${PROJECT_BINARY_DIR}/stereos.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT dev)
endfunction()
