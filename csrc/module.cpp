// The Python extension module unseen_fast._C: importing it loads the op
// library (registering the unseen_fast:: ops) and exposes build facts.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <torch/version.h>

#include "cpu/cpu_features.h"
#include "score_math.h"

#ifndef UNSEEN_FAST_CUDA_ARCHS
#define UNSEEN_FAST_CUDA_ARCHS ""
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "unseen_fast compiled ops (see unseen_fast.ops)";
  m.def("build_info", [] {
    py::dict info;
#ifdef UNSEEN_FAST_WITH_CUDA
    info["cuda_compiled"] = true;
#else
    info["cuda_compiled"] = false;
#endif
    info["cuda_archs"] = UNSEEN_FAST_CUDA_ARCHS;
    info["compiler"] = __VERSION__;
    // _extension.py refuses to load under another torch (its ABI would crash)
    info["torch_version"] = TORCH_VERSION;
    info["cpu_avx512"] = unseen_fast::cpu_has_avx512();
    info["cpu_avx2"] = unseen_fast::cpu_has_avx2();
    return info;
  });
  m.def("score_methods", [] {
    // (name, needs_label) in code order, from the one list in score_math.h
    py::list methods;
    for (int64_t code = 0; code < unseen_fast::kNumMethods; ++code)
      methods.append(py::make_tuple(unseen_fast::method_name(code),
                                    unseen_fast::method_needs_label(code)));
    return methods;
  });
  m.def("set_cpu_simd", &unseen_fast::set_cpu_simd, py::arg("enabled"),
        "Use the best vector CPU path (True) or the portable one (False); returns whether a vector path is in use.");
  m.def("cpu_simd_enabled", &unseen_fast::cpu_simd_enabled);
  m.def("set_cpu_path", [](const std::string& name) {
          return std::string(unseen_fast::cpu_path_name(
              unseen_fast::set_cpu_path(unseen_fast::cpu_path_from_name(name.c_str()))));
        }, py::arg("name"),
        "Ask for the CPU score/loss path 'avx512', 'avx2' or 'portable'; returns the one in use "
        "(never above what the CPU has).");
  m.def("cpu_path", [] { return std::string(unseen_fast::cpu_path_name(unseen_fast::cpu_path())); });
}
