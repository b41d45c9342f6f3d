// select_topk from device-wide tensor ops (select_by_sorting.cpp): what the
// CUDA op runs, also registered for the CPU as _select_topk_by_sorting.
#pragma once

#include <ATen/ATen.h>

namespace unseen_fast {

// Arguments already checked (check_select_args); num_classes = labels' max + 1.
at::Tensor select_topk_by_sorting(const at::Tensor& scores, int64_t k, const at::Tensor& labels, bool balanced,
                                  const at::Tensor& exclude, bool sorted, int64_t num_classes);

}  // namespace unseen_fast
