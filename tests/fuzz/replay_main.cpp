// The main() of a fuzz target built without libFuzzer: feeds every file named on the command
// line (directories: every regular file in them, in name order) to LLVMFuzzerTestOneInput once.
// A violated property aborts; so does anything the sanitizers of the build catch. An input named
// "accept-*" must also be accepted by the gateway (fuzz::accepted).

#include "tests/fuzz/fuzz.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

int main(int argc, char** argv)
{
    namespace fs = std::filesystem;
    std::vector<fs::path> inputs;
    for (int i = 1; i < argc; ++i) {
        const fs::path arg(argv[i]);
        if (fs::is_directory(arg)) {
            for (const auto& entry : fs::directory_iterator(arg)) {
                if (entry.is_regular_file()) {
                    inputs.push_back(entry.path());
                }
            }
        } else {
            inputs.push_back(arg);
        }
    }
    std::sort(inputs.begin(), inputs.end());
    if (inputs.empty()) {
        std::cerr << "usage: " << argv[0] << " FILE|DIR...  (no input found)\n";
        return 2;
    }
    for (const auto& path : inputs) {
        std::ifstream in(path, std::ios::binary);
        if (!in) {
            std::cerr << "cannot read " << path << "\n";
            return 2;
        }
        const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        paybridge::fuzz::accepted = false;
        LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
        const bool must_accept = path.filename().string().rfind("accept-", 0) == 0;
        if (must_accept && !paybridge::fuzz::accepted) {
            std::cerr << path << ": the gateway refused an input the corpus says it accepts\n";
            return 1;
        }
    }
    std::cout << inputs.size() << " inputs replayed\n";
    return 0;
}
