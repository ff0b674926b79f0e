// stereosctl's human output: events as one readable line each, and plain aligned tables.
#pragma once

#include <string>
#include <vector>

#include <boost/json/object.hpp>

namespace stereos::ctl {

// "2026-11-28T14:11:23.123Z vm1 state booting -> ready (health: ready)"
std::string format_event(const boost::json::object& event);

// Rows of cells, the first row being the header; columns are left-aligned and padded.
std::string format_table(const std::vector<std::vector<std::string>>& rows);

// 3725 -> "1h2m5s"
std::string format_seconds(long long seconds);

}  // namespace stereos::ctl
