// replay_io.h: the raw-file reading and writing of the replay programs (engine_replay.cpp, kernel_replay.cpp).
#pragma once

#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

inline std::vector<char> read_raw(const char *path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(std::string("cannot read ") + path);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

inline void write_raw(const char *path, const void *data, size_t bytes) {
    FILE *out = fopen(path, "wb");
    if (!out || fwrite(data, 1, bytes, out) != bytes || fclose(out) != 0)
        throw std::runtime_error(std::string("cannot write ") + path);
}
