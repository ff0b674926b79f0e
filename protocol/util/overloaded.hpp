// `overloaded{lambdas...}`: one visitor for std::visit built from one lambda per alternative.
// Shared by every layer that visits a message or event variant.
#pragma once

namespace stereos::protocol {

template <class... Ts>
struct overloaded : Ts... {
    using Ts::operator()...;
};
// g++ deduces this by itself (aggregate CTAD); clang 14 (fuzz and lint builds) needs the guide.
template <class... Ts>
overloaded(Ts...) -> overloaded<Ts...>;

}  // namespace stereos::protocol
