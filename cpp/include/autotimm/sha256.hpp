// SHA-256 (FIPS 180-4), to check an engine file against its sidecar before deserialising it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace autotimm {

std::string sha256_hex(const uint8_t* data, size_t size);
std::string sha256_hex(const std::vector<uint8_t>& data);

}  // namespace autotimm
