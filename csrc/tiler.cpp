// C++ tiler for mcgenref_fast (SPEC §4 "Tiles"): grid, active tiles, blend weights, gather, fusion.
//
// Bit-identical to the numpy twin (mcgenref_fast/tiling_numpy.py): same operation order, doubles where
// the twin uses float64, no FMA contraction (-ffp-contract=off). Parallel with OpenMP over tiles (gather,
// weights) or canvas rows (normalisation, fusion); every output element is written by one thread in a fixed
// order, so results do not depend on the thread count.
//
// The same extension also holds the fast path's CPU kernels (csrc/update.cpp: the inner GPR update and
// the seed maps), registered by `register_update`.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using f32arr = py::array_t<float, py::array::c_style | py::array::forcecast>;
using i64arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using u8arr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

static constexpr double kPi = 3.14159265358979323846;

// Origins of the tiles along one axis: stride T - O, the last tile shifted back onto the edge.
std::vector<int64_t> axis_origins(int64_t length, int64_t tile, int64_t overlap) {
    if (tile < 1) throw std::invalid_argument("tile size must be >= 1");
    if (overlap < 0 || 2 * overlap > tile) throw std::invalid_argument("overlap must be in [0, tile/2]");
    if (length < 1) throw std::invalid_argument("image side must be >= 1 px");
    std::vector<int64_t> out;
    if (length <= tile) {
        out.push_back(0);
        return out;
    }
    const int64_t stride = tile - overlap;
    const int64_t n = (length - tile + stride - 1) / stride + 1;
    for (int64_t i = 0; i < n; ++i) out.push_back(i * stride);
    out.back() = length - tile;
    return out;
}

// Raised-cosine ramp of `overlap` samples, rising from the tile edge inwards: r[i] + r[O-1-i] = 1.
std::vector<double> ramp(int64_t overlap) {
    std::vector<double> r(static_cast<size_t>(overlap));
    for (int64_t i = 0; i < overlap; ++i)
        r[static_cast<size_t>(i)] = 0.5 - 0.5 * std::cos(kPi * (static_cast<double>(i) + 0.5) / static_cast<double>(overlap));
    return r;
}

// 1-D weight profile of a tile side: 1, tapered over the first/last `overlap` px toward active neighbours.
std::vector<double> profile(int64_t tile, int64_t overlap, bool taper_lo, bool taper_hi) {
    std::vector<double> p(static_cast<size_t>(tile), 1.0);
    const std::vector<double> r = ramp(overlap);
    if (taper_lo)
        for (int64_t i = 0; i < overlap; ++i) p[i] = p[i] * r[i];
    if (taper_hi)
        for (int64_t i = 0; i < overlap; ++i) p[tile - 1 - i] = p[tile - 1 - i] * r[i];
    return p;
}

// Grid + active tiles + normalised weights. Returns (origins (n,2), grid_rc (n,2), weights (n,T,T)).
py::tuple make_grid(int64_t height, int64_t width, int64_t tile, int64_t overlap, u8arr mask) {
    if (mask.ndim() != 2 || mask.shape(0) != height || mask.shape(1) != width)
        throw std::invalid_argument("breast mask must have the image's shape (H, W)");
    const std::vector<int64_t> oy = axis_origins(height, tile, overlap);
    const std::vector<int64_t> ox = axis_origins(width, tile, overlap);
    const int64_t ny = static_cast<int64_t>(oy.size()), nx = static_cast<int64_t>(ox.size());
    const uint8_t* m = mask.data();

    // Summed-area table of the mask: O(1) "any breast pixel in this tile".
    std::vector<int64_t> sat(static_cast<size_t>((height + 1) * (width + 1)), 0);
    for (int64_t y = 0; y < height; ++y) {
        int64_t row = 0;
        for (int64_t x = 0; x < width; ++x) {
            row += m[y * width + x] != 0;
            sat[(y + 1) * (width + 1) + (x + 1)] = sat[y * (width + 1) + (x + 1)] + row;
        }
    }
    std::vector<uint8_t> active(static_cast<size_t>(ny * nx), 0);
    std::vector<int64_t> order;
    for (int64_t gy = 0; gy < ny; ++gy)
        for (int64_t gx = 0; gx < nx; ++gx) {
            const int64_t y0 = oy[gy], x0 = ox[gx];
            const int64_t y1 = std::min(y0 + tile, height), x1 = std::min(x0 + tile, width);
            const int64_t s = sat[y1 * (width + 1) + x1] - sat[y0 * (width + 1) + x1] - sat[y1 * (width + 1) + x0] +
                              sat[y0 * (width + 1) + x0];
            if (s > 0) {
                active[gy * nx + gx] = 1;
                order.push_back(gy * nx + gx);
            }
        }
    const int64_t n = static_cast<int64_t>(order.size());
    i64arr origins({n, static_cast<int64_t>(2)});
    i64arr grid_rc({n, static_cast<int64_t>(2)});
    f32arr weights({n, tile, tile});
    auto po = origins.mutable_unchecked<2>();
    auto pg = grid_rc.mutable_unchecked<2>();
    for (int64_t q = 0; q < n; ++q) {
        pg(q, 0) = order[q] / nx;
        pg(q, 1) = order[q] % nx;
        po(q, 0) = oy[pg(q, 0)];
        po(q, 1) = ox[pg(q, 1)];
    }
    auto is_active = [&](int64_t gy, int64_t gx) {
        return gy >= 0 && gy < ny && gx >= 0 && gx < nx && active[gy * nx + gx] != 0;
    };
    // Raw (un-normalised) weights in double, zero outside the image.
    std::vector<double> raw(static_cast<size_t>(n * tile * tile));
#pragma omp parallel for schedule(static)
    for (int64_t q = 0; q < n; ++q) {
        const int64_t gy = pg(q, 0), gx = pg(q, 1), y0 = po(q, 0), x0 = po(q, 1);
        const std::vector<double> py_ = profile(tile, overlap, is_active(gy - 1, gx), is_active(gy + 1, gx));
        const std::vector<double> px_ = profile(tile, overlap, is_active(gy, gx - 1), is_active(gy, gx + 1));
        double* w = raw.data() + q * tile * tile;
        for (int64_t i = 0; i < tile; ++i)
            for (int64_t j = 0; j < tile; ++j)
                w[i * tile + j] = (y0 + i < height && x0 + j < width) ? py_[i] * px_[j] : 0.0;
    }
    // Sum over tiles per canvas pixel (tile order fixed), then normalise: a partition of unity.
    std::vector<double> total(static_cast<size_t>(height * width), 0.0);
#pragma omp parallel for schedule(static)
    for (int64_t y = 0; y < height; ++y)
        for (int64_t q = 0; q < n; ++q) {
            const int64_t y0 = po(q, 0), x0 = po(q, 1);
            if (y < y0 || y >= y0 + tile) continue;
            const double* w = raw.data() + q * tile * tile + (y - y0) * tile;
            const int64_t x1 = std::min(x0 + tile, width);
            for (int64_t x = x0; x < x1; ++x) total[y * width + x] = total[y * width + x] + w[x - x0];
        }
    float* wout = weights.mutable_data();
#pragma omp parallel for schedule(static)
    for (int64_t q = 0; q < n; ++q) {
        const int64_t y0 = po(q, 0), x0 = po(q, 1);
        for (int64_t i = 0; i < tile; ++i)
            for (int64_t j = 0; j < tile; ++j) {
                const int64_t k = q * tile * tile + i * tile + j;
                const bool inside = y0 + i < height && x0 + j < width;
                wout[k] = inside ? static_cast<float>(raw[k] / total[(y0 + i) * width + (x0 + j)]) : 0.0f;
            }
    }
    return py::make_tuple(origins, grid_rc, weights);
}

// image (H, W) -> tiles (n, T, T), zeros outside the image.
f32arr gather(f32arr image, i64arr origins, int64_t tile) {
    if (image.ndim() != 2) throw std::invalid_argument("image must be 2-D (H, W)");
    if (origins.ndim() != 2 || origins.shape(1) != 2) throw std::invalid_argument("origins must be (n, 2)");
    const int64_t height = image.shape(0), width = image.shape(1), n = origins.shape(0);
    f32arr out({n, tile, tile});
    const float* img = image.data();
    const int64_t* po = origins.data();
    float* o = out.mutable_data();
    {
        py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
        for (int64_t q = 0; q < n; ++q) {
            const int64_t y0 = po[2 * q], x0 = po[2 * q + 1];
            for (int64_t i = 0; i < tile; ++i) {
                float* row = o + (q * tile + i) * tile;
                const int64_t y = y0 + i;
                for (int64_t j = 0; j < tile; ++j) {
                    const int64_t x = x0 + j;
                    row[j] = (y >= 0 && y < height && x >= 0 && x < width) ? img[y * width + x] : 0.0f;
                }
            }
        }
    }
    return out;
}

// Deterministic overlap-add: canvas[y, x] = sum_q weights_q * tiles_q in tile order (float32, no FMA).
f32arr fuse(f32arr tiles, f32arr weights, i64arr origins, int64_t height, int64_t width) {
    if (tiles.ndim() != 3 || weights.ndim() != 3) throw std::invalid_argument("tiles and weights must be (n, T, T)");
    const int64_t n = tiles.shape(0), tile = tiles.shape(1);
    if (tiles.shape(2) != tile || weights.shape(0) != n || weights.shape(1) != tile || weights.shape(2) != tile ||
        origins.ndim() != 2 || origins.shape(0) != n || origins.shape(1) != 2)
        throw std::invalid_argument("tiles (n,T,T), weights (n,T,T) and origins (n,2) disagree");
    f32arr canvas({height, width});
    float* c = canvas.mutable_data();
    const float* t = tiles.data();
    const float* w = weights.data();
    const int64_t* po = origins.data();
    {
        py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
        for (int64_t y = 0; y < height; ++y) {
            float* crow = c + y * width;
            for (int64_t x = 0; x < width; ++x) crow[x] = 0.0f;
            for (int64_t q = 0; q < n; ++q) {
                const int64_t y0 = po[2 * q], x0 = po[2 * q + 1];
                if (y < y0 || y >= y0 + tile) continue;
                const int64_t base = (q * tile + (y - y0)) * tile;
                const int64_t xs = std::max<int64_t>(x0, 0), xe = std::min(x0 + tile, width);
                for (int64_t x = xs; x < xe; ++x) {
                    const float prod = w[base + x - x0] * t[base + x - x0];
                    crow[x] = crow[x] + prod;
                }
            }
        }
    }
    return canvas;
}

void set_num_threads(int n) {
#ifdef _OPENMP
    if (n < 1) throw std::invalid_argument("thread count must be >= 1");
    omp_set_num_threads(n);
#endif
}

int get_num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void register_update(py::module_& m);  // csrc/update.cpp: gpr_update, seed_maps

PYBIND11_MODULE(_tiler, m) {
    m.doc() = "C++ tiler: grid, active tiles, raised-cosine partition-of-unity weights, gather and fusion";
    m.def("axis_origins", &axis_origins, py::arg("length"), py::arg("tile"), py::arg("overlap"));
    m.def("make_grid", &make_grid, py::arg("height"), py::arg("width"), py::arg("tile"), py::arg("overlap"),
          py::arg("mask"));
    m.def("gather", &gather, py::arg("image"), py::arg("origins"), py::arg("tile"));
    m.def("fuse", &fuse, py::arg("tiles"), py::arg("weights"), py::arg("origins"), py::arg("height"),
          py::arg("width"));
    m.def("set_num_threads", &set_num_threads, py::arg("n"));
    m.def("get_num_threads", &get_num_threads);
    register_update(m);
}
