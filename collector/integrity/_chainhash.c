/* The verifier's inner loop in C: each event's canonical encoding
 * (docs/integrity.md section 2), its chain link against the stored hash
 * before it, and its Merkle leaf hash (section 8), over the Arrow buffers
 * of one file, with the GIL released so that one thread per core runs it.
 *
 * SHA-256 is OpenSSL's (libcrypto: the SHA extensions where the CPU has
 * them), the same code hashlib calls.  Nothing here decides whether a lake
 * is valid: verify.parallel uses the result only to confirm; whatever does
 * not match is re-hashed and named by the Python/DuckDB path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

/* Field kinds, as verify.parallel passes them. */
enum { K_STRING = 0, K_LARGE_STRING = 1, K_INT64 = 2, K_BOOL = 3, K_INT32 = 4, K_DICT_STRING = 5 };

typedef struct {
    int kind;
    int64_t offset;            /* the array's offset, in elements (bits for booleans) */
    const uint8_t *b1;         /* offsets / values / bits / dictionary indices */
    const uint8_t *b2;         /* string data / dictionary offsets */
    const uint8_t *b3;         /* dictionary string data */
    int64_t dict_offset;
    int64_t dict_len;
} Field;

typedef struct {
    uint8_t *p;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static const char DIGIT_PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Decimal text of v into out (at least 21 bytes); returns its length.
 * Two digits a step: lengths and timestamps are most of the numbers. */
static size_t fmt_i64(int64_t v, char *out) {
    char tmp[24];
    char *end = tmp + sizeof tmp, *p = end;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    while (u >= 100) {
        unsigned r = (unsigned)(u % 100);
        u /= 100;
        p -= 2;
        memcpy(p, DIGIT_PAIRS + 2 * r, 2);
    }
    if (u >= 10) {
        p -= 2;
        memcpy(p, DIGIT_PAIRS + 2 * u, 2);
    } else {
        *--p = (char)('0' + u);
    }
    size_t k = 0;
    if (v < 0) out[k++] = '-';
    memcpy(out + k, p, (size_t)(end - p));
    return k + (size_t)(end - p);
}

/* Appends "len,text" for one field; returns -1 when out of memory or a
 * dictionary index is out of range. */
static int put_field(Buf *b, const Field *f, int64_t row) {
    const uint8_t *text = NULL;
    size_t tlen = 0;
    char num[24];
    int64_t i = row + f->offset;
    switch (f->kind) {
    case K_STRING: {
        const int32_t *o = (const int32_t *)f->b1;
        text = f->b2 + o[i];
        tlen = (size_t)(o[i + 1] - o[i]);
        break;
    }
    case K_LARGE_STRING: {
        const int64_t *o = (const int64_t *)f->b1;
        text = f->b2 + o[i];
        tlen = (size_t)(o[i + 1] - o[i]);
        break;
    }
    case K_DICT_STRING: {
        int32_t d = ((const int32_t *)f->b1)[i];
        if (d < 0 || d >= f->dict_len) return -1;
        const int32_t *o = (const int32_t *)f->b2;
        int64_t j = d + f->dict_offset;
        text = f->b3 + o[j];
        tlen = (size_t)(o[j + 1] - o[j]);
        break;
    }
    case K_INT64:
        tlen = fmt_i64(((const int64_t *)f->b1)[i], num);
        text = (const uint8_t *)num;
        break;
    case K_INT32:
        tlen = fmt_i64(((const int32_t *)f->b1)[i], num);
        text = (const uint8_t *)num;
        break;
    case K_BOOL:
        num[0] = ((f->b1[i >> 3] >> (i & 7)) & 1) ? '1' : '0';
        text = (const uint8_t *)num;
        tlen = 1;
        break;
    default:
        return -1;
    }
    char len_text[24];
    size_t llen = fmt_i64((int64_t)tlen, len_text);
    if (buf_reserve(b, llen + tlen + 2)) return -1;
    if (b->len) b->p[b->len++] = ',';
    memcpy(b->p + b->len, len_text, llen);
    b->len += llen;
    b->p[b->len++] = ',';
    if (tlen) memcpy(b->p + b->len, text, tlen);
    b->len += tlen;
    return 0;
}

/* Each byte's value as a lowercase hex digit, or 0x10 when it is not one. */
static uint8_t HEX[256];

static void init_hex(void) {
    memset(HEX, 0x10, sizeof HEX);
    for (int c = 0; c < 10; c++) HEX['0' + c] = (uint8_t)c;
    for (int c = 0; c < 6; c++) HEX['a' + c] = (uint8_t)(10 + c);
}

/* The stored chain hash of row i (64 lowercase hex digits) into out[32];
 * -1 when it is not that. */
static int stored_hash(const int32_t *offs, const uint8_t *data, int64_t i, uint8_t *out) {
    if (offs[i + 1] - offs[i] != 64) return -1;
    const uint8_t *s = data + offs[i];
    uint8_t bad = 0;
    for (int k = 0; k < 32; k++) {
        uint8_t hi = HEX[s[2 * k]], lo = HEX[s[2 * k + 1]];
        bad |= hi | lo;
        out[k] = (uint8_t)(hi << 4 | (lo & 0x0f));
    }
    return (bad & 0x10) ? -1 : 0;
}

typedef struct {
    Py_buffer views[3];
    int used;
} Views;

static int get_view(Views *vs, PyObject *obj, const uint8_t **out) {
    if (obj == Py_None) {
        *out = NULL;
        return 0;
    }
    if (vs->used >= 3) {
        PyErr_SetString(PyExc_ValueError, "too many buffers");
        return -1;
    }
    if (PyObject_GetBuffer(obj, &vs->views[vs->used], PyBUF_SIMPLE) < 0) return -1;
    *out = vs->views[vs->used].buf;
    vs->used++;
    return 0;
}

static void release_views(Views *vs, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++)
        for (int j = 0; j < vs[k].used; j++) PyBuffer_Release(&vs[k].views[j]);
}

PyDoc_STRVAR(check_file_doc,
"check_file(fields, hashes, rows, order, leaves) -> (links_ok, first_canon, first_hash, leaf_hashes)\n\n"
"fields: one (kind, offset, buf1, buf2, buf3, dict_offset, dict_len) per hashed field, in\n"
"canonical order, over ``rows`` rows with no NULL.  hashes: (offset, offsets, data) of the\n"
"chain_hash column (string).  order: None, or a buffer of int64 row indices (the rows in seq\n"
"order).  Checks every link after the first against the stored hash before it; with\n"
"``leaves``, returns the leaf hashes SHA-256(0x00 || encoding), concatenated.  links_ok is\n"
"False when a link fails or a stored hash is not 64 lowercase hex digits (leaf hashes are\n"
"then None).");

static PyObject *check_file(PyObject *self, PyObject *args) {
    PyObject *fields_obj, *hashes_obj, *order_obj;
    Py_ssize_t rows;
    int want_leaves;
    if (!PyArg_ParseTuple(args, "OOnOp", &fields_obj, &hashes_obj, &rows, &order_obj, &want_leaves)) return NULL;
    if (rows < 1) {
        PyErr_SetString(PyExc_ValueError, "rows must be at least 1");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(fields_obj, "fields must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t nf = PySequence_Fast_GET_SIZE(seq);
    Field *fields = calloc((size_t)nf + 1, sizeof(Field));
    Views *views = calloc((size_t)nf + 2, sizeof(Views));
    PyObject *result = NULL, *leaf_bytes = NULL;
    Buf buf = {0};
    if (!fields || !views) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t k;
    for (k = 0; k < nf; k++) {
        PyObject *b1, *b2, *b3;
        long long off, doff, dlen;
        Field *f = &fields[k];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "iLOOOLL", &f->kind, &off, &b1, &b2, &b3, &doff,
                              &dlen))
            goto fail_views;
        f->offset = off;
        f->dict_offset = doff;
        f->dict_len = dlen;
        if (get_view(&views[k], b1, &f->b1) || get_view(&views[k], b2, &f->b2) || get_view(&views[k], b3, &f->b3))
            goto fail_views;
    }
    long long hoff;
    PyObject *hb1, *hb2;
    const uint8_t *hoffs_raw, *hdata;
    if (!PyArg_ParseTuple(hashes_obj, "LOO", &hoff, &hb1, &hb2)) goto fail_views;
    if (get_view(&views[nf], hb1, &hoffs_raw) || get_view(&views[nf], hb2, &hdata)) goto fail_views;
    const int64_t *order = NULL;
    if (order_obj != Py_None) {
        const uint8_t *o;
        if (get_view(&views[nf + 1], order_obj, &o)) goto fail_views;
        if (views[nf + 1].views[0].len < (Py_ssize_t)(rows * 8)) {
            PyErr_SetString(PyExc_ValueError, "order is shorter than rows");
            goto fail_views;
        }
        order = (const int64_t *)o;
    }
    if (want_leaves) {
        leaf_bytes = PyBytes_FromStringAndSize(NULL, rows * 32);
        if (!leaf_bytes) goto fail_views;
    }
    uint8_t *leaves = want_leaves ? (uint8_t *)PyBytes_AS_STRING(leaf_bytes) : NULL;
    const int32_t *hoffs = (const int32_t *)hoffs_raw + hoff;
    uint8_t prev[32], cur[32], link[32], first_hash[32];
    uint8_t *first_canon = NULL;
    size_t first_len = 0;
    int ok = 1; /* put_field fails on memory or a bad dictionary index: not confirmed either way */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < rows && ok; i++) {
        int64_t r = order ? order[i] : i;
        if (r < 0 || r >= rows) {
            ok = 0;
            break;
        }
        buf.len = 0;
        for (Py_ssize_t j = 0; j < nf; j++)
            if (put_field(&buf, &fields[j], r)) {
                ok = 0;
                break;
            }
        if (!ok) break;
        if (stored_hash(hoffs, hdata, r, cur)) {
            ok = 0;
            break;
        }
        SHA256_CTX ctx;
        if (i == 0) {
            first_canon = malloc(buf.len ? buf.len : 1);
            if (!first_canon) {
                ok = 0;
                break;
            }
            memcpy(first_canon, buf.p, buf.len);
            first_len = buf.len;
            memcpy(first_hash, cur, 32);
        } else {
            SHA256_Init(&ctx);
            SHA256_Update(&ctx, prev, 32);
            SHA256_Update(&ctx, buf.p, buf.len);
            SHA256_Final(link, &ctx);
            if (memcmp(link, cur, 32) != 0) {
                ok = 0;
                break;
            }
        }
        if (leaves) {
            static const uint8_t zero = 0;
            SHA256_Init(&ctx);
            SHA256_Update(&ctx, &zero, 1);
            SHA256_Update(&ctx, buf.p, buf.len);
            SHA256_Final(leaves + 32 * i, &ctx);
        }
        memcpy(prev, cur, 32);
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        result = Py_BuildValue("(OOOO)", Py_False, Py_None, Py_None, Py_None);
    } else {
        result = Py_BuildValue("(Oy#y#O)", Py_True, (const char *)first_canon, (Py_ssize_t)first_len,
                               (const char *)first_hash, (Py_ssize_t)32, leaf_bytes ? leaf_bytes : Py_None);
    }
    free(first_canon);
fail_views:
    release_views(views, nf + 2);
done:
    Py_XDECREF(leaf_bytes);
    free(buf.p);
    free(fields);
    free(views);
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(complete_root_doc,
"complete_root(leaves, start, size) -> bytes\n\n"
"The root of the complete Merkle subtree over ``size`` (a power of two) leaf hashes of\n"
"``leaves`` (32 bytes each) from leaf ``start``: node = SHA-256(0x01 || left || right).");

static PyObject *complete_root(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, size;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &size)) return NULL;
    if (size < 1 || (size & (size - 1)) || start < 0 || (start + size) * 32 > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "size must be a power of two within the leaves");
        return NULL;
    }
    uint8_t *level = malloc((size_t)size * 32);
    if (!level) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    memcpy(level, (const uint8_t *)view.buf + start * 32, (size_t)size * 32);
    static const uint8_t one = 1;
    for (Py_ssize_t n = size; n > 1; n /= 2)
        for (Py_ssize_t k = 0; k < n / 2; k++) {
            SHA256_CTX ctx;
            SHA256_Init(&ctx);
            SHA256_Update(&ctx, &one, 1);
            SHA256_Update(&ctx, level + 64 * k, 64);
            SHA256_Final(level + 32 * k, &ctx);
        }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *out = PyBytes_FromStringAndSize((const char *)level, 32);
    free(level);
    return out;
}

static PyMethodDef methods[] = {
    {"check_file", check_file, METH_VARARGS, check_file_doc},
    {"complete_root", complete_root, METH_VARARGS, complete_root_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chainhash",
    "The verifier's per-event loop (encoding, chain link, Merkle leaf) in C, GIL released.", -1, methods,
};

PyMODINIT_FUNC PyInit__chainhash(void) {
    init_hex();
    return PyModule_Create(&module);
}
