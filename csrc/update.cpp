// CPU kernels of the fast path (SPEC §4.4, §5) in the C++ extension: the inner TT-GPR update and the
// squared distance to the nearest seed (the seed maps' argument).
//
// gpr_update: one Jacobi step z - η·g for a batch of tiles in one pass over each tile, row by row (the
// row's edge fluxes stay in a small buffer), reading the fused canvas Z through each tile's window (no
// gather) and, optionally, the energy per tile. Same arithmetic as the torch twin
// (`ops_torch.gpr_update_torch`) up to float32 rounding: the exp and log1p are branch-free polynomials
// here (a few ulp; see `exp_nonpos`, `log1p_unit`) so that the compiler vectorises the row loops; the
// energy is summed in double per tile (8 fixed lanes, then the lanes in order), so results do not depend
// on the thread count nor on the vector width. Built with -ffp-contract=off (no FMA contraction).
//
// seed_maps: the seed dots S and blend maps W from the integer d² = min_c |u - c|² to the nearest of a tile's
// seeds (exact in float32, as `ops_torch.seed_distance2`) through look-up tables (the caller computes the tables with the
// torch ops of the reference on every d² value 0..2(T-1)², so the maps are those ops' results).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace {

using f32arr = py::array_t<float, py::array::c_style | py::array::forcecast>;
using i64arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using u8arr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// One clone per instruction set, picked at load time (ifunc). The arithmetic is the same IEEE operations
// in every clone (no FMA: -ffp-contract=off), so the results do not depend on the clone.
#define MCG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MCG_CLONES
#endif
#define MCG_INLINE inline __attribute__((always_inline))

MCG_INLINE float bits_to_float(int32_t i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}

// exp(x) for x <= 0 (x clamped at -87: results down to ~1.6e-38, no denormals), Cephes' expf: round
// x·log2(e) to n (the 1.5·2^23 trick, valid |n| < 2^22), r = x - n·ln2 in two parts, degree-6 polynomial
// on |r| <= ln2/2, times 2^n built from its bits. Error about 1 ulp. Branch-free, vectorises.
MCG_INLINE float exp_nonpos(float x) {
    x = std::max(x, -87.0f);
    const float magic = 12582912.0f;  // 1.5 * 2^23
    const float fn = (x * 1.44269504088896341f + magic) - magic;
    float r = x - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    const float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    const int32_t n = static_cast<int32_t>(fn);
    return p * bits_to_float((n + 127) << 23);
}

// log1p(e) for e in [0, 1]: 2·atanh(s), s = e / (2 + e) in [0, 1/3], the odd series up to s^17
// (truncation < 2e-9 relative). Branch-free, vectorises.
MCG_INLINE float log1p_unit(float e) {
    const float s = e / (2.0f + e);
    const float s2 = s * s;
    float p = 1.0f / 17.0f;
    p = p * s2 + 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}

// Σ v[0..n) in double: 8 lanes (element j into lane j % 8, in order), then the lanes in order.
MCG_INLINE double sum_lanes(const float* v, int64_t n) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(v[j + k]);
    for (int k = 0; j < n; ++j, ++k) acc[k] += static_cast<double>(v[j]);
    double total = 0.0;
    for (int k = 0; k < 8; ++k) total += acc[k];
    return total;
}

struct UpdateParams {
    float eta, lam_ov, lam_edge, delta2, lam_prox;
};

// One tile: rows [0, er) × cols [0, ec) are inside the image (the rest is padding: z copied, no energy).
// omega_h (T, T-1), omega_v (T-1, T) of this tile; zc: the canvas at the tile's origin, row pitch `pitch`.
template <bool Energy>
MCG_INLINE double update_tile_impl(const float* z, const float* y, const float* z0, const float* w, const float* oh,
                   const float* ov, const float* zc, int64_t pitch, int64_t tile, int64_t er, int64_t ec,
                   const UpdateParams& prm, float* out) {
    std::vector<float> buf(static_cast<size_t>(6 * (tile + 1)), 0.0f);
    float* fh_base = buf.data();                  // fh_base[0] = 0: the flux "left of column 0"
    float* fh = fh_base + 1;                      // fh[j]: pair (j, j+1) of this row, 0 from ec-1 on
    float* fv_prev = buf.data() + (tile + 1);     // pair (i-1, i), 0 for i = 0
    float* fv = fv_prev + (tile + 1);             // pair (i, i+1), 0 on the last inside row
    float* eh = fv + (tile + 1);                  // energy of the horizontal pairs (ω r)
    float* ev = eh + (tile + 1);                  // of the vertical pairs
    float* ep = ev + (tile + 1);                  // energy per pixel of this row
    const float d2 = prm.delta2, lo = prm.lam_ov, le = prm.lam_edge, lp = prm.lam_prox, neta = -prm.eta;
    const float half_lo = 0.5f * lo, half_lp = 0.5f * lp;
    double total = 0.0;
    for (int64_t i = 0; i < er; ++i) {
        const float* zr = z + i * tile;
        const float* yr = y + i * tile;
        const float* z0r = z0 + i * tile;
        const float* wr = w + i * tile;
        const float* cr = zc + i * pitch;
        const float* ohr = oh + i * (tile - 1);
        float* o = out + i * tile;
        const int64_t nh = ec - 1;                // horizontal pairs inside the image
#pragma omp simd
        for (int64_t j = 0; j < nh; ++j) {
            const float d = zr[j] - zr[j + 1];
            const float r = std::sqrt(d * d + d2);
            fh[j] = d * ohr[j] / r;
            eh[j] = r * ohr[j];
        }
        for (int64_t j = std::max<int64_t>(nh, 0); j < tile; ++j) fh[j] = eh[j] = 0.0f;
        if (i + 1 < er) {
            const float* zd = zr + tile;
            const float* ovr = ov + i * tile;
#pragma omp simd
            for (int64_t j = 0; j < ec; ++j) {
                const float d = zr[j] - zd[j];
                const float r = std::sqrt(d * d + d2);
                fv[j] = d * ovr[j] / r;
                ev[j] = r * ovr[j];
            }
        } else {
            for (int64_t j = 0; j < ec; ++j) fv[j] = ev[j] = 0.0f;
        }
#pragma omp simd
        for (int64_t j = 0; j < ec; ++j) {
            const float zj = zr[j];
            const float e = exp_nonpos(-std::fabs(zj));                  // exp(-|z|)
            const float inv = 1.0f / (1.0f + e);
            const float e_inv = e * inv;
            const float p = zj >= 0.0f ? inv : e_inv;                    // sigmoid(z)
            const float dov = zj - cr[j];
            const float dp = zj - z0r[j];
            float g = p - yr[j];
            g = g + lo * (dov * wr[j]);
            g = g + lp * dp;
            g = g + le * fh[j];
            g = g - le * fh[j - 1];
            g = g + le * fv[j];
            g = g - le * fv_prev[j];
            o[j] = zj + neta * g;
            if (Energy) {
                const float bce = std::max(zj, 0.0f) - zj * yr[j] + log1p_unit(e);
                ep[j] = bce + half_lo * (wr[j] * dov * dov) + half_lp * (dp * dp) + le * (eh[j] + ev[j]);
            }
        }
        for (int64_t j = ec; j < tile; ++j) o[j] = zr[j];
        if (Energy) total += sum_lanes(ep, ec);
        std::swap(fv_prev, fv);
    }
    for (int64_t i = er; i < tile; ++i) std::memcpy(out + i * tile, z + i * tile, sizeof(float) * tile);
    return total;
}

MCG_CLONES double update_tile_energy(const float* z, const float* y, const float* z0, const float* w,
                                     const float* oh, const float* ov, const float* zc, int64_t pitch,
                                     int64_t tile, int64_t er, int64_t ec, const UpdateParams& prm, float* out) {
    return update_tile_impl<true>(z, y, z0, w, oh, ov, zc, pitch, tile, er, ec, prm, out);
}

MCG_CLONES double update_tile_plain(const float* z, const float* y, const float* z0, const float* w,
                                    const float* oh, const float* ov, const float* zc, int64_t pitch,
                                    int64_t tile, int64_t er, int64_t ec, const UpdateParams& prm, float* out) {
    return update_tile_impl<false>(z, y, z0, w, oh, ov, zc, pitch, tile, er, ec, prm, out);
}

void check3(const f32arr& a, const char* name, int64_t n, int64_t r, int64_t c) {
    if (a.ndim() != 3 || a.shape(0) != n || a.shape(1) != r || a.shape(2) != c)
        throw std::invalid_argument(std::string(name) + " has the wrong shape");
}

// z, y, z0, w (n, T, T); omega_h (n, T, T-1), omega_v (n, T-1, T); canvas (H, W); origins (n, 2).
// Returns (z_new (n, T, T), energy (n,) float64 or None).
py::tuple gpr_update(f32arr z, f32arr y, f32arr canvas, f32arr z0, f32arr w, f32arr omega_h, f32arr omega_v,
                     i64arr origins, double eta, double lam_ov, double lam_edge, double edge_delta,
                     double lam_prox, bool return_energy) {
    if (z.ndim() != 3 || z.shape(1) != z.shape(2)) throw std::invalid_argument("z must be (n, T, T)");
    const int64_t n = z.shape(0), tile = z.shape(1);
    if (tile < 2) throw std::invalid_argument("tile size must be >= 2");
    check3(y, "y", n, tile, tile);
    check3(z0, "z0", n, tile, tile);
    check3(w, "w", n, tile, tile);
    check3(omega_h, "omega_h", n, tile, tile - 1);
    check3(omega_v, "omega_v", n, tile - 1, tile);
    if (canvas.ndim() != 2) throw std::invalid_argument("canvas must be (H, W)");
    if (origins.ndim() != 2 || origins.shape(0) != n || origins.shape(1) != 2)
        throw std::invalid_argument("origins must be (n, 2)");
    const int64_t height = canvas.shape(0), width = canvas.shape(1);
    const int64_t* po = origins.data();
    for (int64_t q = 0; q < n; ++q)
        if (po[2 * q] < 0 || po[2 * q + 1] < 0 || po[2 * q] >= height || po[2 * q + 1] >= width)
            throw std::invalid_argument("a tile origin lies outside the canvas");
    const UpdateParams prm{static_cast<float>(eta), static_cast<float>(lam_ov), static_cast<float>(lam_edge),
                           static_cast<float>(edge_delta * edge_delta), static_cast<float>(lam_prox)};
    f32arr out({n, tile, tile});
    py::array_t<double> energy(n);
    const float *pz = z.data(), *py_ = y.data(), *pz0 = z0.data(), *pw = w.data(), *poh = omega_h.data(),
                *pov = omega_v.data(), *pc = canvas.data();
    float* pout = out.mutable_data();
    double* pe = energy.mutable_data();
    {
        py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
        for (int64_t q = 0; q < n; ++q) {
            const int64_t y0 = po[2 * q], x0 = po[2 * q + 1];
            const int64_t er = std::min(tile, height - y0), ec = std::min(tile, width - x0);
            const int64_t tt = q * tile * tile;
            pe[q] = (return_energy ? update_tile_energy : update_tile_plain)(pz + tt, py_ + tt, pz0 + tt, pw + tt, poh + q * tile * (tile - 1),
                                pov + q * (tile - 1) * tile, pc + y0 * width + x0, width, tile, er, ec, prm,
                                pout + tt);
        }
    }
    if (!return_energy) return py::make_tuple(out, py::none());
    return py::make_tuple(out, energy);
}

// Seed dots S and blend maps W of one tile from look-up tables indexed by the integer d² to the nearest of
// its k seeds (k >= 1, inside the tile); W = 0 where valid (T, T) is 0 (valid may be null: all valid).
MCG_CLONES void seed_maps_tile(const int64_t* seeds, int64_t k, int64_t tile, const float* lut_s,
                               int32_t s_zero_from, const float* lut_w, const uint8_t* valid, float* s_out,
                               float* w_out) {
    std::vector<int32_t> dx2(static_cast<size_t>(k * tile));
    std::vector<int32_t> row(static_cast<size_t>(tile));
    for (int64_t s = 0; s < k; ++s) {
        const int32_t cx = static_cast<int32_t>(seeds[2 * s + 1]);
        for (int64_t j = 0; j < tile; ++j) {
            const int32_t t = static_cast<int32_t>(j) - cx;
            dx2[s * tile + j] = t * t;
        }
    }
    for (int64_t i = 0; i < tile; ++i) {
        int32_t* r = row.data();
        {
            const int32_t t = static_cast<int32_t>(i) - static_cast<int32_t>(seeds[0]);
            const int32_t a = t * t;
            const int32_t* b = dx2.data();
#pragma omp simd
            for (int64_t j = 0; j < tile; ++j) r[j] = a + b[j];
        }
        for (int64_t s = 1; s < k; ++s) {
            const int32_t t = static_cast<int32_t>(i) - static_cast<int32_t>(seeds[2 * s]);
            const int32_t a = t * t;
            const int32_t* b = dx2.data() + s * tile;
#pragma omp simd
            for (int64_t j = 0; j < tile; ++j) {
                const int32_t v = a + b[j];
                const int32_t cur = r[j];
                r[j] = v < cur ? v : cur;
            }
        }
        float* so = s_out + i * tile;
        float* wo = w_out + i * tile;
        for (int64_t j = 0; j < tile; ++j) so[j] = r[j] < s_zero_from ? lut_s[r[j]] : 0.0f;
        if (valid != nullptr) {
            const uint8_t* v = valid + i * tile;
            for (int64_t j = 0; j < tile; ++j) wo[j] = v[j] ? lut_w[r[j]] : 0.0f;
        } else {
            for (int64_t j = 0; j < tile; ++j) wo[j] = lut_w[r[j]];
        }
    }
}

// local (c, m, 2) int64 tile-local (row, col) in [0, T), counts (c,), lut_s / lut_w (>= 2(T-1)² + 1,)
// indexed by d², valid (c, T, T) uint8 or None -> (S, W) (c, T, T) float32; 0 for a tile without seeds.
py::tuple seed_maps(i64arr local, i64arr counts, int64_t tile, f32arr lut_s, f32arr lut_w, py::object valid) {
    if (local.ndim() != 3 || local.shape(2) != 2) throw std::invalid_argument("local must be (c, m, 2)");
    const int64_t c = local.shape(0), m = local.shape(1);
    if (counts.ndim() != 1 || counts.shape(0) != c) throw std::invalid_argument("counts must be (c,)");
    if (tile < 1) throw std::invalid_argument("tile size must be >= 1");
    const int64_t need = 2 * (tile - 1) * (tile - 1) + 1;
    if (lut_s.ndim() != 1 || lut_w.ndim() != 1 || lut_s.shape(0) < need || lut_w.shape(0) < need)
        throw std::invalid_argument("the look-up tables need 2(T-1)^2 + 1 entries");
    const int64_t* pl = local.data();
    const int64_t* pc = counts.data();
    for (int64_t q = 0; q < c; ++q) {
        const int64_t k = std::max<int64_t>(0, std::min(pc[q], m));
        for (int64_t s = 0; s < 2 * k; ++s)
            if (pl[q * m * 2 + s] < 0 || pl[q * m * 2 + s] >= tile)
                throw std::invalid_argument("a seed lies outside its tile");
    }
    u8arr valid_arr;
    const uint8_t* pv = nullptr;
    if (!valid.is_none()) {
        valid_arr = u8arr::ensure(valid);
        if (!valid_arr || valid_arr.ndim() != 3 || valid_arr.shape(0) != c || valid_arr.shape(1) != tile ||
            valid_arr.shape(2) != tile)
            throw std::invalid_argument("valid must be (c, T, T)");
        pv = valid_arr.data();
    }
    f32arr s_out({c, tile, tile});
    f32arr w_out({c, tile, tile});
    float* ps = s_out.mutable_data();
    float* pw = w_out.mutable_data();
    const float* ls = lut_s.data();
    const float* lw = lut_w.data();
    int32_t s_zero_from = static_cast<int32_t>(need);    // lut_s[k] == 0 for k >= s_zero_from (S's tail)
    while (s_zero_from > 0 && ls[s_zero_from - 1] == 0.0f) --s_zero_from;
    {
        py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t q = 0; q < c; ++q) {
            const int64_t k = std::max<int64_t>(0, std::min(pc[q], m));
            float* so = ps + q * tile * tile;
            float* wo = pw + q * tile * tile;
            if (k == 0) {
                std::fill(so, so + tile * tile, 0.0f);
                std::fill(wo, wo + tile * tile, 0.0f);
                continue;
            }
            seed_maps_tile(pl + q * m * 2, k, tile, ls, s_zero_from, lw, pv == nullptr ? nullptr : pv + q * tile * tile, so, wo);
        }
    }
    return py::make_tuple(s_out, w_out);
}

}  // namespace

void register_update(py::module_& m) {
    m.def("gpr_update", &gpr_update, py::arg("z"), py::arg("y"), py::arg("canvas"), py::arg("z0"), py::arg("w"),
          py::arg("omega_h"), py::arg("omega_v"), py::arg("origins"), py::arg("eta"), py::arg("lam_ov"),
          py::arg("lam_edge"), py::arg("edge_delta"), py::arg("lam_prox"), py::arg("return_energy"),
          "One TT-GPR inner step z - eta*g for a tile batch (SPEC 4.4), and the energy per tile (float64) "
          "or None");
    m.def("seed_maps", &seed_maps, py::arg("local"), py::arg("counts"), py::arg("tile"), py::arg("lut_s"),
          py::arg("lut_w"), py::arg("valid") = py::none(),
          "Seed dots S and blend maps W (c, T, T) from look-up tables indexed by the squared distance to the "
          "nearest seed");
}
