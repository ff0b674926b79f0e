# Precompiled headers: a build detail only (PRIVATE, never in the installed interface), meant to
# cut the time every TU spends parsing the same Boost.Asio and standard headers. Off: measured on
# a 2-core machine, the time saved parsing (1-2 s of a 15-20 s coroutine TU, less elsewhere) is
# spent loading the 150 MB header, and g++ 12 then reports -Wstringop-overflow/-Warray-bounds
# inside libstdc++ that it does not report without it (daemon/logging.cpp,
# tests/unit/test_line_framer.cpp), which -Werror turns into errors.
option(STEREOS_PCH "Precompile the common Boost and standard headers (see above)" OFF)

# Heavy, stable headers most of the libraries' TUs include. Kept to the standard library and
# Asio's core: a bigger header costs every TU more to load than it saves the few that use it.
set(STEREOS_PCH_LIBRARY_HEADERS
    <algorithm> <array> <chrono> <functional> <map> <memory> <optional> <string> <string_view>
    <variant> <vector>
    <boost/asio/awaitable.hpp> <boost/asio/co_spawn.hpp> <boost/asio/experimental/awaitable_operators.hpp>
    <boost/asio/io_context.hpp> <boost/asio/local/stream_protocol.hpp> <boost/asio/steady_timer.hpp>
    <boost/asio/use_awaitable.hpp> <boost/asio/write.hpp>)
# The Boost.Test programs: the above, Boost.Test, Beast HTTP, JSON and more of Asio. Not all of
# Asio: read_until.hpp tests BOOST_REGEX_DYN_LINK, which only the tests linking Boost.Log define.
set(STEREOS_PCH_TEST_HEADERS ${STEREOS_PCH_LIBRARY_HEADERS}
    <fstream> <random> <thread>
    <boost/asio/generic/stream_protocol.hpp> <boost/asio/ip/tcp.hpp> <boost/asio/post.hpp>
    <boost/asio/posix/stream_descriptor.hpp> <boost/asio/read.hpp> <boost/asio/signal_set.hpp>
    <boost/beast/http.hpp> <boost/json.hpp> <boost/test/unit_test.hpp>)

# One precompiled header is built per set, by a target of its own compiling an empty source, and
# every user takes it with REUSE_FROM. Users must share its flags and definitions (extra
# definitions the headers do not test are fine); GCC silently parses the headers instead when
# they differ, so check a change with -Winvalid-pch.
function(stereos_pch_owner owner headers)
    set(source ${PROJECT_BINARY_DIR}/pch/${owner}.cpp)
    file(CONFIGURE OUTPUT ${source} CONTENT "// Builds the precompiled header only.\n")
    add_library(${owner} OBJECT ${source})
    target_link_libraries(${owner} PRIVATE ${ARGN} stereos_build_flags)
    target_precompile_headers(${owner} PRIVATE ${headers})
endfunction()

# stereos_use_pch(OWNER target...): the targets compile with OWNER's precompiled header.
function(stereos_use_pch owner)
    if(NOT STEREOS_PCH)
        return()
    endif()
    foreach(target IN LISTS ARGN)
        target_precompile_headers(${target} REUSE_FROM ${owner})
    endforeach()
endfunction()

if(STEREOS_PCH)
    stereos_pch_owner(stereos_pch_library "${STEREOS_PCH_LIBRARY_HEADERS}" Boost::headers Boost::json)
endif()
