// Host side only (ATen): the launch element of a logits dtype.
#pragma once

#include <ATen/ATen.h>

#include "launch.h"

namespace unseen_fast::cuda {

// Only the three dtypes check_score_args admits reach here.
inline Element element_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return Element::kFloat32;
    case at::kBFloat16:
      return Element::kBFloat16;
    default:
      return Element::kFloat16;
  }
}

}  // namespace unseen_fast::cuda
