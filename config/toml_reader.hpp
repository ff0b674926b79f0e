// The config file's reader, the adapter from toml++ to the model: toml++ parses the text,
// model_reader reads its shape into the model, the guest rules judge the values, and every
// problem is reported with its file, line and key, so one run shows everything to fix. Only
// toml_reader.cpp includes toml++.
#pragma once

#include <string_view>

#include "config/config.hpp"

namespace stereos::config {

// load_config_text, with the files the guests name probed through `files` (a test's fake host).
config_result read_toml_config(std::string_view text, std::string_view source_name,
                               load_options options, const file_probe& files);

}  // namespace stereos::config
