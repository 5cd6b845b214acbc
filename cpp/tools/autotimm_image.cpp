// autotimm_image IN.ppm OUT.ppm --exif-orientation N: the displayed picture of an image stored with EXIF
// orientation N (1-8), as the Python runtime and PIL's ImageOps.exif_transpose give it.  For callers that decode
// JPEGs themselves: apply the orientation before letterboxing so that boxes are in the displayed frame.
#include <cstdio>
#include <cstring>
#include <string>

#include "autotimm/image.hpp"

using namespace autotimm;

int main(int argc, char** argv) {
  if (argc != 5 || std::strcmp(argv[3], "--exif-orientation") != 0) {
    std::fprintf(stderr, "usage: autotimm_image IN.ppm OUT.ppm --exif-orientation N\n");
    return 2;
  }
  try {
    write_ppm(apply_exif_orientation(read_ppm(argv[1]), std::stoi(argv[4])), argv[2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "autotimm_image: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
