// Host side only (ATen): launch facts of a logits tensor.
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

// Whether the kernels may read rows with 16-byte loads: adjacent columns, the
// base and every row start 16-byte aligned.
inline bool rows_are_aligned(const at::Tensor& logits) {
  return logits.stride(1) == 1 && reinterpret_cast<uintptr_t>(logits.const_data_ptr()) % 16 == 0 &&
         (logits.stride(0) * logits.element_size()) % 16 == 0;
}

}  // namespace unseen_fast::cuda
