// Completion tokens every coroutine in the project uses: `use_tuple` makes an awaited operation
// return its error_code as a value (expected errors are not exceptions), and
// `rethrow_if_failed` is the co_spawn handler for background tasks that must never fail.
// Threads: constants and a stateless function, usable from any executor.
#pragma once

#include <exception>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace stereos::transport {

inline constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

// An exception out of a background task is a bug: rethrow it out of io_context::run() rather
// than lose it.
inline void rethrow_if_failed(const std::exception_ptr& failure) {
    if (failure)
        std::rethrow_exception(failure);
}

}  // namespace stereos::transport
