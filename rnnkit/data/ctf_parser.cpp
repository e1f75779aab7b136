// The fast path of rnnkit.data.ctf: parses one chunk of a CTF file (whole sequences) into flat
// arrays, with exactly the semantics of the Python parser in ctf.py (_PythonChunkParser).
//
// It handles only clean input. Anything that needs a message - a syntax error, a short dense
// sample (zero-filled with a warning), a float32 overflow - makes it return a non-zero code,
// and ctf.py parses the chunk again in Python, which names the file, line and column and
// applies max_errors/strict. Undeclared streams are skipped here; their names are reported
// back so that Python can warn once per name.
//
// Built with the system C++ compiler into rnnkit's extension cache (see _ctf_native.py) and
// loaded with ctypes: plain C ABI, no Python or torch headers, so the build takes a second.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#if defined(__GLIBC__) || defined(__APPLE__)
#include <locale.h>
#define RNNKIT_HAVE_STRTOD_L 1
#endif

namespace {

enum Code : int64_t {
    kOk = 0,
    kError = 1,        // malformed input: Python re-parses and reports
    kShortSample = 2,  // a dense sample with fewer values than its dimension: Python warns
    kCapacity = 3,     // an output array is full (cannot happen with ctf.py's bounds)
};

const int kMaxUndeclared = 16;

inline bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }
inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; }

const double kPow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                         1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                         1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

double slow_strtod(const char* a, const char* b) {
    std::string text(a, size_t(b - a));
#ifdef RNNKIT_HAVE_STRTOD_L
    // the C locale, whatever the process locale says about the decimal point
    static locale_t c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (c_locale) return strtod_l(text.c_str(), nullptr, c_locale);
#endif
    return std::strtod(text.c_str(), nullptr);
}

bool word_is(const char* a, const char* b, const char* word) {
    size_t n = std::strlen(word);
    if (size_t(b - a) != n) return false;
    for (size_t i = 0; i < n; ++i)
        if (lower(a[i]) != word[i]) return false;
    return true;
}

// A number as the Python parser's _NUMBER accepts it:
//   [+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?  |  [+-]? (inf|infinity|nan)
// converted correctly rounded to double (float() and strtod agree). Returns false when the
// token is not a number or a finite text overflows double.
bool parse_number(const char* a, const char* b, double* out) {
    const char* p = a;
    bool negative = false;
    if (p < b && (*p == '+' || *p == '-')) {
        negative = *p == '-';
        ++p;
    }
    if (p < b && !is_digit(*p) && *p != '.') {
        if (word_is(p, b, "inf") || word_is(p, b, "infinity") || word_is(p, b, "nan")) {
            *out = slow_strtod(a, b);
            return true;
        }
        return false;
    }
    uint64_t mantissa = 0;
    int digits = 0;      // significant digits kept in mantissa
    bool dropped = false;  // more than 19 significant digits: not exact in the fast path
    int exponent = 0;    // decimal exponent adjustment from the digits
    int seen = 0;
    while (p < b && is_digit(*p)) {
        ++seen;
        if (mantissa == 0 && *p == '0') {
            ++p;
            continue;
        }
        if (digits < 19) {
            mantissa = mantissa * 10 + uint64_t(*p - '0');
            ++digits;
        } else {
            ++exponent;
            if (*p != '0') dropped = true;
        }
        ++p;
    }
    if (p < b && *p == '.') {
        ++p;
        while (p < b && is_digit(*p)) {
            ++seen;
            if (mantissa == 0 && *p == '0') {
                --exponent;
                ++p;
                continue;
            }
            if (digits < 19) {
                mantissa = mantissa * 10 + uint64_t(*p - '0');
                ++digits;
                --exponent;
            } else if (*p != '0') {
                dropped = true;
            }
            ++p;
        }
    }
    if (seen == 0) return false;
    if (p < b && (*p == 'e' || *p == 'E')) {
        ++p;
        bool exp_negative = false;
        if (p < b && (*p == '+' || *p == '-')) {
            exp_negative = *p == '-';
            ++p;
        }
        if (p == b || !is_digit(*p)) return false;
        long e = 0;
        while (p < b && is_digit(*p)) {
            if (e < 100000) e = e * 10 + (*p - '0');
            ++p;
        }
        exponent += int(exp_negative ? -e : e);
    }
    if (p != b) return false;
    double value;
    if (mantissa == 0) {
        value = 0.0;
    } else if (!dropped && mantissa <= (uint64_t(1) << 53) && exponent >= -22 &&
               exponent <= 22) {
        // Clinger's fast path: both operands exact, one correctly rounded operation
        value = double(mantissa);
        value = exponent < 0 ? value / kPow10[-exponent] : value * kPow10[exponent];
    } else {
        value = std::fabs(slow_strtod(a, b));
        if (std::isinf(value)) return false;  // finite text, beyond double
    }
    *out = negative ? -value : value;
    return true;
}

struct Stream {
    const char* name;
    int64_t name_len;
    int64_t dim;
    bool sparse;
    bool f64;
    void* values;
    int64_t values_cap;
    int64_t* indices;       // sparse
    int64_t* nnz_offsets;   // sparse, samples + 1
    int64_t* seq_offsets;   // sequences + 1
    int64_t samples_cap;
    int64_t samples = 0;
    int64_t nvalues = 0;
    int64_t seq_start = 0;  // samples before the current sequence
    int64_t last_line = -1;
};

struct Parser {
    std::vector<Stream> streams;
    int64_t* lengths;
    int64_t* first_lines;
    int64_t seq_cap;
    int64_t sequences = 0;
    int kind = 0;  // current sequence: 0 none, 1 began with an id, 2 began without one
    const char* cur_id = nullptr;
    int64_t cur_id_len = 0;
    int64_t seq_first_line = 0;
    // undeclared stream names met (pointers into the chunk), reported back for the warnings
    const char* undeclared[kMaxUndeclared];
    int64_t undeclared_len[kMaxUndeclared];
    int undeclared_count = 0;
    bool undeclared_overflow = false;

    int64_t close_sequence() {
        if (kind == 0) return kOk;
        int64_t n = 0;
        for (auto& s : streams) n = std::max(n, s.samples - s.seq_start);
        if (n == 0) return kOk;  // comments only: no sequence
        if (sequences >= seq_cap) return kCapacity;
        for (auto& s : streams) {
            s.seq_offsets[sequences + 1] = s.samples;
            s.seq_start = s.samples;
        }
        lengths[sequences] = n;
        first_lines[sequences] = seq_first_line;
        ++sequences;
        return kOk;
    }

    void note_undeclared(const char* a, int64_t n) {
        for (int i = 0; i < undeclared_count; ++i)
            if (undeclared_len[i] == n && std::memcmp(undeclared[i], a, size_t(n)) == 0) return;
        if (undeclared_count == kMaxUndeclared) {
            undeclared_overflow = true;
            return;
        }
        undeclared[undeclared_count] = a;
        undeclared_len[undeclared_count] = n;
        ++undeclared_count;
    }

    int64_t dense(Stream& s, const char* t, const char* end) {
        int64_t count = 0;
        while (true) {
            while (t < end && is_space(*t)) ++t;
            if (t == end) break;
            const char* a = t;
            while (t < end && !is_space(*t)) ++t;
            if (count == s.dim) return kError;  // too many values
            double v;
            if (!parse_number(a, t, &v)) return kError;
            int64_t at = s.nvalues + count;
            if (at >= s.values_cap) return kCapacity;
            if (s.f64) {
                static_cast<double*>(s.values)[at] = v;
            } else {
                float f = float(v);
                if (std::isinf(f) && !std::isinf(v)) return kError;  // beyond float32
                static_cast<float*>(s.values)[at] = f;
            }
            ++count;
        }
        if (count < s.dim) return kShortSample;
        s.nvalues += count;
        return kOk;
    }

    int64_t sparse(Stream& s, const char* t, const char* end) {
        while (true) {
            while (t < end && is_space(*t)) ++t;
            if (t == end) break;
            const char* a = t;
            int64_t index = 0;
            while (t < end && is_digit(*t)) {
                if (index > (INT64_MAX - 9) / 10) return kError;
                index = index * 10 + (*t - '0');
                if (index >= s.dim) return kError;  // out of range (also stops overflow)
                ++t;
            }
            if (t == a || t == end || *t != ':') return kError;
            ++t;
            const char* v0 = t;
            while (t < end && !is_space(*t)) ++t;
            double v;
            if (!parse_number(v0, t, &v)) return kError;
            if (s.nvalues >= s.values_cap) return kCapacity;
            if (s.f64) {
                static_cast<double*>(s.values)[s.nvalues] = v;
            } else {
                float f = float(v);
                if (std::isinf(f) && !std::isinf(v)) return kError;
                static_cast<float*>(s.values)[s.nvalues] = f;
            }
            s.indices[s.nvalues] = index;
            ++s.nvalues;
        }
        s.nnz_offsets[s.samples + 1] = s.nvalues;
        return kOk;
    }

    int64_t line(const char* p, const char* le, int64_t line_no) {
        const char* s = p;
        while (s < le && is_space(*s)) ++s;
        if (s == le) return kOk;  // blank
        const char* bar = static_cast<const char*>(std::memchr(s, '|', size_t(le - s)));
        if (!bar) return kError;
        const char* id_end = bar;
        while (id_end > s && is_space(id_end[-1])) --id_end;
        bool has_id = id_end > s;
        for (const char* c = s; c < id_end; ++c)
            if (is_space(*c)) return kError;  // two words before the first '|'
        bool starts = has_id ? !(kind == 1 && cur_id_len == id_end - s &&
                                 std::memcmp(cur_id, s, size_t(id_end - s)) == 0)
                             : kind != 1;
        if (starts) {
            int64_t code = close_sequence();
            if (code != kOk) return code;
            kind = has_id ? 1 : 2;
            cur_id = s;
            cur_id_len = id_end - s;
            seq_first_line = line_no;
        }
        const char* t = bar + 1;
        while (true) {
            if (t == le) return kError;  // '|' followed by nothing
            if (*t == '#') {             // a comment runs to the next '|'
                const char* next = static_cast<const char*>(std::memchr(t, '|', size_t(le - t)));
                if (!next) break;
                t = next + 1;
                continue;
            }
            if (is_space(*t) || *t == '|') return kError;  // no stream name after '|'
            const char* ne = t;
            while (ne < le && !is_space(*ne) && *ne != '|') ++ne;
            const char* pe = static_cast<const char*>(std::memchr(ne, '|', size_t(le - ne)));
            if (!pe) pe = le;
            Stream* st = nullptr;
            for (auto& candidate : streams)
                if (candidate.name_len == ne - t &&
                    std::memcmp(candidate.name, t, size_t(ne - t)) == 0) {
                    st = &candidate;
                    break;
                }
            if (!st) {
                note_undeclared(t, ne - t);
            } else {
                if (st->last_line == line_no) return kError;  // the stream twice on a line
                st->last_line = line_no;
                if (st->samples >= st->samples_cap) return kCapacity;
                int64_t code = st->sparse ? sparse(*st, ne, pe) : dense(*st, ne, pe);
                if (code != kOk) return code;
                ++st->samples;
            }
            if (pe == le) break;
            t = pe + 1;
        }
        return kOk;
    }
};

}  // namespace

extern "C" {

// Parses buf[0:len). Per stream i (n_streams): names[name_offsets[i]:name_offsets[i+1]],
// dims[i], flags[i] (bit 0 sparse, bit 1 float64), output arrays values[i] (values_caps[i]
// elements of float or double), indices[i] and nnz_offsets[i] (sparse; nnz_offsets[i][0]
// must be 0), seq_offsets[i] (seq_cap + 1; [0] must be 0), samples_caps[i].
// Outputs: lengths/first_lines (seq_cap each), counts = [sequences, then per stream samples
// and values], undeclared = up to 16 (offset, length) pairs plus a count and an overflow
// flag, error_line = the 0-based line where parsing stopped. Returns a Code.
int64_t rnnkit_ctf_parse(const char* buf, int64_t len, int64_t n_streams, const char* names,
                         const int64_t* name_offsets, const int64_t* dims, const int64_t* flags,
                         void** values, const int64_t* values_caps, int64_t** indices,
                         int64_t** nnz_offsets, int64_t** seq_offsets,
                         const int64_t* samples_caps, int64_t* lengths, int64_t* first_lines,
                         int64_t seq_cap, int64_t* counts, int64_t* undeclared,
                         int64_t* error_line) {
    Parser parser;
    parser.lengths = lengths;
    parser.first_lines = first_lines;
    parser.seq_cap = seq_cap;
    for (int64_t i = 0; i < n_streams; ++i) {
        Stream s;
        s.name = names + name_offsets[i];
        s.name_len = name_offsets[i + 1] - name_offsets[i];
        s.dim = dims[i];
        s.sparse = (flags[i] & 1) != 0;
        s.f64 = (flags[i] & 2) != 0;
        s.values = values[i];
        s.values_cap = values_caps[i];
        s.indices = indices[i];
        s.nnz_offsets = nnz_offsets[i];
        s.seq_offsets = seq_offsets[i];
        s.samples_cap = samples_caps[i];
        parser.streams.push_back(s);
    }
    const char* p = buf;
    const char* end = buf + len;
    int64_t line_no = 0;
    int64_t code = kOk;
    while (p < end) {
        const char* nl = static_cast<const char*>(std::memchr(p, '\n', size_t(end - p)));
        const char* le = nl ? nl : end;
        code = parser.line(p, le, line_no);
        if (code != kOk) break;
        p = le + 1;
        ++line_no;
    }
    if (code == kOk) code = parser.close_sequence();
    *error_line = line_no;
    counts[0] = parser.sequences;
    for (int64_t i = 0; i < n_streams; ++i) {
        counts[1 + 2 * i] = parser.streams[size_t(i)].samples;
        counts[2 + 2 * i] = parser.streams[size_t(i)].nvalues;
    }
    for (int i = 0; i < parser.undeclared_count; ++i) {
        undeclared[2 * i] = parser.undeclared[i] - buf;
        undeclared[2 * i + 1] = parser.undeclared_len[i];
    }
    undeclared[2 * kMaxUndeclared] = parser.undeclared_count;
    undeclared[2 * kMaxUndeclared + 1] = parser.undeclared_overflow ? 1 : 0;
    return code;
}

}  // extern "C"
