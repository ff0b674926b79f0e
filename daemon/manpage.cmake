# Manual pages: written in scdoc, rendered to roff at build time and installed.
#   stereos_add_manpage(SOURCE)  e.g. stereos-hostd.8.scd -> man8/stereos-hostd.8
include_guard(GLOBAL)

option(STEREOS_MANPAGES "Render and install the manual pages (needs scdoc)" ON)
if(STEREOS_MANPAGES)
    find_program(SCDOC_EXECUTABLE scdoc)
    if(NOT SCDOC_EXECUTABLE)
        message(FATAL_ERROR "scdoc not found: it renders the manual pages. Install it "
                            "(apt-get install scdoc) or configure with -DSTEREOS_MANPAGES=OFF.")
    endif()
    add_custom_target(stereos_manpages ALL)
endif()

function(stereos_add_manpage source)
    if(NOT STEREOS_MANPAGES)
        return()
    endif()
    # "name.SECTION.scd": the page is "name.SECTION", installed to manSECTION.
    get_filename_component(page "${source}" NAME)
    string(REGEX REPLACE "\\.scd$" "" page "${page}")
    string(REGEX REPLACE "^.*\\.([1-8])$" "\\1" section "${page}")
    set(output "${PROJECT_BINARY_DIR}/man/man${section}/${page}")
    add_custom_command(
        OUTPUT "${output}"
        COMMAND ${CMAKE_COMMAND} -E make_directory "${PROJECT_BINARY_DIR}/man/man${section}"
        # scdoc reads stdin and writes stdout; a failed run leaves no page behind.
        COMMAND sh -c "\"$0\" < \"$1\" > \"$2.tmp\" && mv \"$2.tmp\" \"$2\"" "${SCDOC_EXECUTABLE}"
                "${CMAKE_CURRENT_SOURCE_DIR}/${source}" "${output}"
        DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/${source}"
        COMMENT "Rendering manual page ${page}"
        VERBATIM)
    string(MAKE_C_IDENTIFIER "${page}" target_suffix)
    add_custom_target(stereos_manpage_${target_suffix} DEPENDS "${output}")
    add_dependencies(stereos_manpages stereos_manpage_${target_suffix})
    install(FILES "${output}" DESTINATION "${CMAKE_INSTALL_MANDIR}/man${section}")
endfunction()
