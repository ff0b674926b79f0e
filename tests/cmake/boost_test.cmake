# Registers every Boost.Test case of an executable as its own CTest test, like
# gtest_discover_tests: after each build the executable lists its cases (--list_content) and a
# generated file adds one add_test() per case, so `ctest` prints the usual per-case summary.

set(STEREOS_BOOST_TEST_DISCOVER "${CMAKE_CURRENT_LIST_DIR}/boost_test_discover.cmake")

# Every test program's definitions.
set(STEREOS_BOOST_TEST_DEFINITIONS
    BOOST_TEST_DYN_LINK
    STEREOS_TEST_DATA_DIR="${PROJECT_SOURCE_DIR}/tests/data")

# stereos_add_boost_test(TARGET <name> SOURCES <files...> [LIBRARIES <libs...>] [LABELS <l...>]
#                        [TIMEOUT <seconds per case>])
function(stereos_add_boost_test)
    cmake_parse_arguments(arg "" "TARGET;TIMEOUT" "SOURCES;LIBRARIES;LABELS" ${ARGN})
    # A folder's main.cpp (the runner: BOOST_TEST_MODULE) is compiled once, into an object
    # library its test programs share.
    set(sources ${arg_SOURCES})
    set(main_library)
    if("main.cpp" IN_LIST sources)
        list(REMOVE_ITEM sources main.cpp)
        file(RELATIVE_PATH folder ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
        string(MAKE_C_IDENTIFIER "${folder}_main" main_library)
        if(NOT TARGET ${main_library})
            add_library(${main_library} OBJECT main.cpp)
            target_link_libraries(${main_library} PRIVATE Boost::unit_test_framework
                stereos_build_flags)
            target_compile_definitions(${main_library} PRIVATE ${STEREOS_BOOST_TEST_DEFINITIONS})
        endif()
    endif()
    add_executable(${arg_TARGET} ${sources})
    target_link_libraries(${arg_TARGET} PRIVATE
        ${main_library} ${arg_LIBRARIES} Boost::unit_test_framework stereos_build_flags)
    target_compile_definitions(${arg_TARGET} PRIVATE ${STEREOS_BOOST_TEST_DEFINITIONS})

    set(cases_file "${CMAKE_CURRENT_BINARY_DIR}/${arg_TARGET}_cases.cmake")
    set(include_file "${CMAKE_CURRENT_BINARY_DIR}/${arg_TARGET}_include.cmake")
    file(WRITE "${include_file}"
        "if(EXISTS \"${cases_file}\")\n"
        "  include(\"${cases_file}\")\n"
        "else()\n"
        "  add_test(${arg_TARGET}_NOT_BUILT ${arg_TARGET}_NOT_BUILT)\n"
        "endif()\n")
    set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${include_file}")
    add_custom_command(TARGET ${arg_TARGET} POST_BUILD
        COMMAND ${CMAKE_COMMAND}
            -D "EXECUTABLE=$<TARGET_FILE:${arg_TARGET}>"
            -D "OUTPUT=${cases_file}"
            -D "PREFIX=${arg_TARGET}"
            -D "LABELS=${arg_LABELS}"
            -D "TIMEOUT=${arg_TIMEOUT}"
            -D "WORKDIR=${CMAKE_CURRENT_BINARY_DIR}"
            -P "${STEREOS_BOOST_TEST_DISCOVER}"
        BYPRODUCTS "${cases_file}"
        VERBATIM)
endfunction()
