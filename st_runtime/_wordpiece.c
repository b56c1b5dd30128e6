/* st_runtime._wordpiece: BERT-style WordPiece tokenization of ASCII texts into flat token id arrays, without the
 * interpreter lock (see st_runtime/nativetok.py, which decides when a tokenizer may use it and checks it against
 * the tokenizer itself before it does).
 *
 * Per text, in order: the normalizer's ASCII steps (delete control characters but tab, newline and carriage
 * return, which become spaces; lowercase), a check for added tokens' contents (a text holding one, in any letter
 * case, before or after those steps, is left to the tokenizer: flag 0), BertPreTokenizer's ASCII form (split at
 * whitespace, isolate each ASCII punctuation character), WordPiece's greedy longest-match-first (a word longer
 * than max_input_chars_per_word, or with a part no vocabulary entry matches, is the unknown token), truncation to
 * a number of tokens from the right or the left, and the special tokens around the text.
 *
 * encode() reads the texts' characters under the interpreter lock (each text is kept alive by a reference), then
 * releases it for the work: threads encoding different chunks run in parallel. It returns three bytes objects:
 * the token ids (int32, every text's ids one after another), each text's token count (int64) and each text's flag
 * (uint8: 1 tokenized here, 0 left to the tokenizer, with no ids). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* a call is spread over threads only where each gets at least this many characters (about 0.1 ms of work) */
#define MIN_PART_CHARS 16384
#define MAX_THREADS 64
/* and batches' arrays where each gets at least this many tokens: writing fresh arrays is bound by their page faults,
 * which threads share (2-vCPU VM, 2 threads against 1: 0.57x at 43k padded tokens, 0.92x at 169k, 0.97x at 675k,
 * 1.23x at 2.7M) */
#define MIN_FILL_TOKENS 1048576

typedef struct {
    uint32_t hash;
    uint32_t key; /* offset in the arena */
    uint32_t len;
    int32_t id;
} Slot;

typedef struct {
    Slot *slots;
    uint32_t mask; /* capacity - 1 (a power of two) */
    uint32_t longest;
} Table;

typedef struct {
    PyObject_HEAD
    char *arena;
    size_t arena_len;
    Table words;     /* every ASCII vocabulary entry as it is */
    Table pieces;    /* entries starting with the continuing-subword prefix, without it */
    int32_t unk;
    Py_ssize_t max_chars;
    int lower;
    int clean;
    int prefixed; /* a non-empty continuing-subword prefix: pieces after the first are looked up in `pieces` */
    /* added tokens' contents, lowercased ASCII, joined in the arena; by first byte */
    uint32_t *added_off;
    uint32_t *added_len;
    Py_ssize_t n_added;
    uint8_t first[256];
} WordPiece;

static uint32_t fnv(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h;
}

static int32_t lookup(const WordPiece *wp, const Table *t, const char *s, size_t n) {
    if (n > t->longest || t->slots == NULL) return -1;
    uint32_t h = fnv(s, n);
    for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
        const Slot *slot = &t->slots[i];
        if (slot->len == 0) return -1;
        if (slot->hash == h && slot->len == n && memcmp(wp->arena + slot->key, s, n) == 0) return slot->id;
    }
}

static void put(WordPiece *wp, Table *t, uint32_t key, uint32_t n, int32_t id) {
    uint32_t h = fnv(wp->arena + key, n);
    for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
        Slot *slot = &t->slots[i];
        if (slot->len == 0) {
            slot->hash = h;
            slot->key = key;
            slot->len = n;
            slot->id = id;
            if (n > t->longest) t->longest = n;
            return;
        }
        if (slot->hash == h && slot->len == n && memcmp(wp->arena + slot->key, wp->arena + key, n) == 0) return;
    }
}

static int table_init(Table *t, Py_ssize_t entries) {
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t)entries + 2) cap <<= 1;
    t->slots = calloc(cap, sizeof(Slot));
    t->mask = cap - 1;
    t->longest = 0;
    return t->slots != NULL;
}

static void wp_dealloc(WordPiece *wp) {
    free(wp->arena);
    free(wp->words.slots);
    free(wp->pieces.slots);
    free(wp->added_off);
    free(wp->added_len);
    Py_TYPE(wp)->tp_free((PyObject *)wp);
}

/* the ASCII bytes of a str, or NULL (not a str, or not ASCII) */
static const char *ascii_of(PyObject *s, Py_ssize_t *n) {
    if (!PyUnicode_Check(s) || !PyUnicode_IS_ASCII(s)) return NULL;
    *n = PyUnicode_GET_LENGTH(s);
    return (const char *)PyUnicode_1BYTE_DATA(s);
}

static int append_arena(WordPiece *wp, size_t *cap, const char *s, size_t n, uint32_t *at) {
    if (wp->arena_len + n > UINT32_MAX) return 0;
    if (wp->arena_len + n > *cap) {
        size_t grown = (*cap ? *cap * 2 : 4096);
        while (grown < wp->arena_len + n) grown *= 2;
        char *arena = realloc(wp->arena, grown);
        if (arena == NULL) return 0;
        wp->arena = arena;
        *cap = grown;
    }
    memcpy(wp->arena + wp->arena_len, s, n);
    *at = (uint32_t)wp->arena_len;
    wp->arena_len += n;
    return 1;
}

static int wp_init(WordPiece *wp, PyObject *args, PyObject *kwds) {
    static char *names[] = {"vocab", "unk_id", "prefix", "max_chars", "lower", "clean", "added", NULL};
    PyObject *vocab, *added;
    const char *prefix;
    Py_ssize_t prefix_len;
    int unk;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!is#nppO!", names, &PyDict_Type, &vocab, &unk, &prefix,
                                     &prefix_len, &wp->max_chars, &wp->lower, &wp->clean, &PyList_Type, &added))
        return -1;
    if (wp->words.slots != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "WordPiece is initialized once");
        return -1;
    }
    wp->unk = unk;
    wp->prefixed = prefix_len > 0;
    Py_ssize_t entries = PyDict_Size(vocab);
    if (!table_init(&wp->words, entries) || !table_init(&wp->pieces, entries)) {
        PyErr_NoMemory();
        return -1;
    }
    size_t cap = 0;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(vocab, &pos, &key, &value)) {
        Py_ssize_t n;
        const char *s = ascii_of(key, &n);
        if (s == NULL || n == 0) continue; /* ASCII text never matches another entry */
        long id = PyLong_AsLong(value);
        if (id == -1 && PyErr_Occurred()) return -1;
        uint32_t at;
        if (!append_arena(wp, &cap, s, (size_t)n, &at)) {
            PyErr_NoMemory();
            return -1;
        }
        put(wp, &wp->words, at, (uint32_t)n, (int32_t)id);
        if (prefix_len > 0 && n > prefix_len && memcmp(s, prefix, prefix_len) == 0)
            put(wp, &wp->pieces, at + (uint32_t)prefix_len, (uint32_t)(n - prefix_len), (int32_t)id);
    }
    wp->n_added = PyList_GET_SIZE(added);
    wp->added_off = calloc(wp->n_added + 1, sizeof(uint32_t));
    wp->added_len = calloc(wp->n_added + 1, sizeof(uint32_t));
    if (wp->added_off == NULL || wp->added_len == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(wp->first, 0, sizeof(wp->first));
    for (Py_ssize_t i = 0; i < wp->n_added; i++) {
        Py_ssize_t n;
        const char *s = ascii_of(PyList_GET_ITEM(added, i), &n);
        if (s == NULL || n == 0) {
            PyErr_SetString(PyExc_ValueError, "added token contents must be non-empty ASCII strings");
            return -1;
        }
        if (!append_arena(wp, &cap, s, (size_t)n, &wp->added_off[i])) {
            PyErr_NoMemory();
            return -1;
        }
        wp->added_len[i] = (uint32_t)n;
        for (Py_ssize_t j = 0; j < n; j++) /* stored lowercased */
            if (wp->arena[wp->added_off[i] + j] >= 'A' && wp->arena[wp->added_off[i] + j] <= 'Z')
                wp->arena[wp->added_off[i] + j] += 32;
        wp->first[(uint8_t)wp->arena[wp->added_off[i]]] = 1;
    }
    return 0;
}

static inline char lowered(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

/* whether s[0:n] holds an added token's content in any letter case */
static int holds_added(const WordPiece *wp, const char *s, size_t n) {
    if (wp->n_added == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        if (!wp->first[(uint8_t)lowered(s[i])]) continue;
        for (Py_ssize_t k = 0; k < wp->n_added; k++) {
            size_t m = wp->added_len[k];
            if (m > n - i) continue;
            const char *c = wp->arena + wp->added_off[k];
            size_t j = 0;
            while (j < m && lowered(s[i + j]) == c[j]) j++;
            if (j == m) return 1;
        }
    }
    return 0;
}

static inline int is_space(uint8_t c) { return c == ' ' || (c >= 9 && c <= 13); }

static inline int is_punct(uint8_t c) {
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
}

typedef struct {
    int32_t *ids;
    size_t len, cap;
} Ids;

static int push(Ids *out, int32_t id) {
    if (out->len == out->cap) {
        size_t cap = out->cap ? out->cap * 2 : 1024;
        int32_t *ids = realloc(out->ids, cap * sizeof(int32_t));
        if (ids == NULL) return 0;
        out->ids = ids;
        out->cap = cap;
    }
    out->ids[out->len++] = id;
    return 1;
}

/* one word's pieces appended to out; 0 when out of memory */
static int word_pieces(const WordPiece *wp, const char *w, size_t n, Ids *out) {
    if ((Py_ssize_t)n > wp->max_chars) return push(out, wp->unk);
    size_t mark = out->len, start = 0;
    while (start < n) {
        const Table *t = start && wp->prefixed ? &wp->pieces : &wp->words;
        size_t end = n - start > t->longest ? start + t->longest : n;
        int32_t id = -1;
        for (; end > start; end--) {
            id = lookup(wp, t, w + start, end - start);
            if (id >= 0) break;
        }
        if (id < 0) {
            out->len = mark;
            return push(out, wp->unk);
        }
        if (!push(out, id)) return 0;
        start = end;
    }
    return 1;
}

/* the text's ids (after normalization) appended to out, stopping once `stop` ids are there (stop < 0: never);
 * 0 when out of memory */
static int tokenize(const WordPiece *wp, const char *s, size_t n, Ids *out, Py_ssize_t stop) {
    size_t base = out->len;
    size_t i = 0;
    while (i < n) {
        if (stop >= 0 && (Py_ssize_t)(out->len - base) >= stop) break;
        uint8_t c = (uint8_t)s[i];
        if (is_space(c)) {
            i++;
            continue;
        }
        size_t j = i;
        if (is_punct(c))
            j = i + 1;
        else
            while (j < n && !is_space((uint8_t)s[j]) && !is_punct((uint8_t)s[j])) j++;
        if (!word_pieces(wp, s + i, j - i, out)) return 0;
        i = j;
    }
    if (stop >= 0 && (Py_ssize_t)(out->len - base) > stop) out->len = base + (size_t)stop;
    return 1;
}

/* the normalizer's ASCII steps into buf (room for n bytes); the normalized length */
static size_t normalize(const WordPiece *wp, const char *s, size_t n, char *buf) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (wp->clean) {
            if (c == '\t' || c == '\n' || c == '\r')
                c = ' ';
            else if ((uint8_t)c < 32 || c == 127)
                continue;
        }
        buf[k++] = wp->lower ? lowered(c) : c;
    }
    return k;
}

typedef struct {
    PyObject **items;
    Py_ssize_t count;
    Py_ssize_t budget; /* tokens of the text kept (-1: all) */
    int left;
    const int32_t *head, *tail;
    Py_ssize_t n_head, n_tail;
    Ids out;
    int64_t *lengths;
    uint8_t *ok;
} Job;

/* the work of encode(), without the interpreter lock; 0 when out of memory */
static int run(const WordPiece *wp, Job *job) {
    char *buf = NULL;
    size_t buf_cap = 0;
    Ids text = {NULL, 0, 0};
    int fine = 1;
    for (Py_ssize_t t = 0; t < job->count && fine; t++) {
        job->lengths[t] = 0;
        job->ok[t] = 0;
        Py_ssize_t n;
        const char *s = ascii_of(job->items[t], &n);
        if (s == NULL) continue;
        if (holds_added(wp, s, (size_t)n)) continue;
        const char *norm = s;
        size_t m = (size_t)n;
        if (wp->clean || wp->lower) {
            if ((size_t)n > buf_cap) {
                free(buf);
                buf_cap = (size_t)n * 2 + 64;
                buf = malloc(buf_cap);
                if (buf == NULL) {
                    fine = 0;
                    break;
                }
            }
            m = normalize(wp, s, (size_t)n, buf);
            norm = buf;
            if (holds_added(wp, norm, m)) continue;
        }
        size_t before = job->out.len;
        for (Py_ssize_t k = 0; k < job->n_head && fine; k++) fine = push(&job->out, job->head[k]);
        if (!fine) break;
        if (job->budget >= 0 && job->left) { /* the last `budget` tokens: tokenize all, keep the end */
            text.len = 0;
            if (!tokenize(wp, norm, m, &text, -1)) {
                fine = 0;
                break;
            }
            size_t from = text.len > (size_t)job->budget ? text.len - (size_t)job->budget : 0;
            for (size_t k = from; k < text.len && fine; k++) fine = push(&job->out, text.ids[k]);
        } else {
            fine = tokenize(wp, norm, m, &job->out, job->budget);
        }
        for (Py_ssize_t k = 0; k < job->n_tail && fine; k++) fine = push(&job->out, job->tail[k]);
        job->lengths[t] = (int64_t)(job->out.len - before);
        job->ok[t] = 1;
    }
    free(buf);
    free(text.ids);
    return fine;
}

static int32_t *int_list(PyObject *list, Py_ssize_t *n) {
    *n = PyList_GET_SIZE(list);
    int32_t *out = malloc((*n + 1) * sizeof(int32_t));
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < *n; i++) {
        long v = PyLong_AsLong(PyList_GET_ITEM(list, i));
        if (v == -1 && PyErr_Occurred()) {
            free(out);
            return NULL;
        }
        out[i] = (int32_t)v;
    }
    return out;
}


/* run fn on n arguments (args, args + stride, ...): the first on the calling thread, the others on threads started
 * for the call (a process-wide pool of sleeping threads measured slower on a VM: waking a sleeping thread took
 * longer than starting one); where no thread can be had, the calling thread runs that part too */
static void run_parallel(int n, void *(*fn)(void *), void *args, size_t stride) {
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int k = 1; k < n; k++) started[k] = pthread_create(&tids[k], NULL, fn, (char *)args + (size_t)k * stride) == 0;
    fn(args);
    for (int k = 1; k < n; k++) {
        if (started[k])
            pthread_join(tids[k], NULL);
        else
            fn((char *)args + (size_t)k * stride);
    }
}

/* a contiguous range of a call's texts, encoded on one thread */
typedef struct {
    const WordPiece *wp;
    Job job;
    int fine;
} Part;

static void *part_main(void *arg) {
    Part *part = arg;
    part->fine = run(part->wp, &part->job);
    return NULL;
}

/* encode the job's texts in up to `threads` contiguous parts of about equal characters, one per thread (the calling
 * thread takes the first); parts[k].job.out holds part k's ids; the number of parts, or 0 when out of memory */
static int run_parts(const WordPiece *wp, const Job *job, const Py_ssize_t *chars, int threads, Part *parts) {
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < job->count; i++) total += chars[i];
    int n = threads;
    if ((Py_ssize_t)n > total / MIN_PART_CHARS) n = (int)(total / MIN_PART_CHARS);
    if ((Py_ssize_t)n > job->count) n = (int)job->count;
    if (n < 1) n = 1;
    Py_ssize_t at = 0, seen = 0;
    for (int k = 0; k < n; k++) {
        Py_ssize_t from = at;
        Py_ssize_t goal = total / n * (k + 1);
        if (k == n - 1) at = job->count;
        else
            while (at < job->count && (seen < goal || at == from)) seen += chars[at++];
        parts[k].wp = wp;
        parts[k].job = *job;
        parts[k].job.items = job->items + from;
        parts[k].job.count = at - from;
        parts[k].job.lengths = job->lengths + from;
        parts[k].job.ok = job->ok + from;
        memset(&parts[k].job.out, 0, sizeof(Ids));
        parts[k].fine = 0;
    }
    run_parallel(n, part_main, parts, sizeof(Part));
    for (int k = 0; k < n; k++)
        if (!parts[k].fine) return 0;
    return n;
}

static PyObject *wp_encode(WordPiece *wp, PyObject *args, PyObject *kwds) {
    static char *names[] = {"texts", "budget", "left", "head", "tail", "threads", NULL};
    PyObject *texts, *head, *tail;
    int threads = 1;
    Job job;
    memset(&job, 0, sizeof(job));
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!npO!O!|i", names, &PyList_Type, &texts, &job.budget, &job.left,
                                     &PyList_Type, &head, &PyList_Type, &tail, &threads))
        return NULL;
    if (wp->words.slots == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "WordPiece was not initialized");
        return NULL;
    }
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    job.count = PyList_GET_SIZE(texts);
    int32_t *h = int_list(head, &job.n_head);
    int32_t *tl = h ? int_list(tail, &job.n_tail) : NULL;
    job.items = PyMem_Malloc((job.count + 1) * sizeof(PyObject *));
    job.lengths = PyMem_Malloc((job.count + 1) * sizeof(int64_t));
    job.ok = PyMem_Malloc(job.count + 1);
    Py_ssize_t *chars = PyMem_Malloc((job.count + 1) * sizeof(Py_ssize_t));
    Part parts[MAX_THREADS];
    int n_parts = 0;
    memset(parts, 0, sizeof(parts));
    PyObject *result = NULL;
    if (h == NULL || tl == NULL || job.items == NULL || job.lengths == NULL || job.ok == NULL || chars == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    job.head = h;
    job.tail = tl;
    for (Py_ssize_t i = 0; i < job.count; i++) { /* each text stays alive while the lock is released */
        job.items[i] = PyList_GET_ITEM(texts, i);
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_Check(job.items[i]) && PyUnicode_READY(job.items[i]) < 0) {
            for (Py_ssize_t k = 0; k < i; k++) Py_DECREF(job.items[k]);
            goto done;
        }
#endif
        chars[i] = PyUnicode_Check(job.items[i]) ? PyUnicode_GET_LENGTH(job.items[i]) : 0;
        Py_INCREF(job.items[i]);
    }
    Py_BEGIN_ALLOW_THREADS
    n_parts = run_parts(wp, &job, chars, threads, parts);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < job.count; i++) Py_DECREF(job.items[i]);
    if (n_parts == 0) {
        PyErr_NoMemory();
        goto done;
    }
    size_t total = 0;
    for (int k = 0; k < n_parts; k++) total += parts[k].job.out.len;
    PyObject *ids = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total * sizeof(int32_t)));
    if (ids == NULL) goto done;
    char *w = PyBytes_AS_STRING(ids);
    for (int k = 0; k < n_parts; k++) {
        if (parts[k].job.out.len) memcpy(w, parts[k].job.out.ids, parts[k].job.out.len * sizeof(int32_t));
        w += parts[k].job.out.len * sizeof(int32_t);
    }
    result = Py_BuildValue("(Ny#y#)", ids, (const char *)job.lengths, (Py_ssize_t)(job.count * sizeof(int64_t)),
                           (const char *)job.ok, job.count);
done:
    for (int k = 0; k < MAX_THREADS; k++) free(parts[k].job.out.ids);
    free(h);
    free(tl);
    PyMem_Free(job.items);
    PyMem_Free(job.lengths);
    PyMem_Free(job.ok);
    PyMem_Free(chars);
    return result;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return 0;
    if (view->itemsize != itemsize && !(itemsize == 0 && (view->itemsize == 4 || view->itemsize == 8))) {
        PyErr_Format(PyExc_ValueError, "%s: expected items of %zd bytes, got %zd", what, itemsize, view->itemsize);
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}


/* rows of padded arrays: item at[r] of the flat ids (int32 or int64, `itemsize`) into row r of out, mask (and of
 * out_types from ts, when given) */
static void fill_rows(const void *ids, Py_ssize_t itemsize, const int64_t *b, const int64_t *at, Py_ssize_t rows,
                      Py_ssize_t width, int64_t pad, int left, int64_t *o, int64_t *m, const int64_t *ts,
                      int64_t *ot) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        int64_t s = b[at[r]], n = b[at[r] + 1] - s;
        int64_t *row = o + r * width, *mrow = m + r * width, *trow = ot ? ot + r * width : NULL;
        Py_ssize_t first = left ? width - (Py_ssize_t)n : 0; /* where the tokens start */
        for (Py_ssize_t c = 0; c < width; c++) {
            row[c] = pad;
            mrow[c] = 0;
            if (trow) trow[c] = 0;
        }
        if (itemsize == 4) {
            const int32_t *src = (const int32_t *)ids + s;
            for (int64_t k = 0; k < n; k++) row[first + k] = src[k];
        } else {
            memcpy(row + first, (const int64_t *)ids + s, (size_t)n * 8);
        }
        for (int64_t k = 0; k < n; k++) mrow[first + k] = 1;
        if (trow) memcpy(trow + first, ts + s, (size_t)n * 8);
    }
}

typedef struct {
    Py_buffer out, mask, out_types;
    int taken; /* buffers held: 0-3 */
    int64_t from, rows, width;
} Batch;

typedef struct {
    const void *ids;
    Py_ssize_t itemsize;
    const int64_t *bounds, *order, *types;
    int64_t pad;
    int left;
    Batch *batches;
    Py_ssize_t first, last; /* this thread's batches */
} FillPart;

static void *fill_part(void *arg) {
    FillPart *p = arg;
    for (Py_ssize_t k = p->first; k < p->last; k++) {
        Batch *bt = &p->batches[k];
        fill_rows(p->ids, p->itemsize, p->bounds, p->order + bt->from, bt->rows, bt->width, p->pad, p->left,
                  bt->out.buf, bt->mask.buf, p->types, p->types ? bt->out_types.buf : NULL);
    }
    return NULL;
}

static PyObject *fill_batches(PyObject *self, PyObject *args) {
    PyObject *ids_o, *bounds_o, *order_o, *plan_o, *outs_o, *types_o;
    long long pad;
    int left, threads;
    if (!PyArg_ParseTuple(args, "OOOOLpO!Oi", &ids_o, &bounds_o, &order_o, &plan_o, &pad, &left, &PyList_Type,
                          &outs_o, &types_o, &threads))
        return NULL;
    Py_buffer ids, bounds, order, plan, types;
    int typed = types_o != Py_None, got = 0, fine = 0;
    Py_ssize_t k_batches = PyList_GET_SIZE(outs_o);
    Batch *batches = PyMem_Calloc(k_batches + 1, sizeof(Batch));
    if (batches == NULL) return PyErr_NoMemory();
    if (get_buffer(ids_o, &ids, 0, 0, "ids")) got++; else goto done;
    if (get_buffer(bounds_o, &bounds, 0, 8, "bounds")) got++; else goto done;
    if (get_buffer(order_o, &order, 0, 8, "order")) got++; else goto done;
    if (get_buffer(plan_o, &plan, 0, 8, "plan")) got++; else goto done;
    if (typed) {
        if (get_buffer(types_o, &types, 0, 8, "types")) got++; else goto done;
    }
    Py_ssize_t n_items = bounds.len / 8 - 1, n_ids = ids.len / ids.itemsize, n_order = order.len / 8;
    const int64_t *b = bounds.buf, *at = order.buf, *pl = plan.buf; /* plan: (start, end, width) per batch */
    if (plan.len != k_batches * 3 * 8 || (typed && types.len / 8 != n_ids)) {
        PyErr_SetString(PyExc_ValueError, "fill_batches: one (start, end, width) per output, and types like ids");
        goto done;
    }
    for (Py_ssize_t k = 0; k < k_batches; k++) {
        Batch *bt = &batches[k];
        bt->from = pl[3 * k];
        bt->rows = pl[3 * k + 1] - pl[3 * k];
        bt->width = pl[3 * k + 2];
        PyObject *o = PyList_GET_ITEM(outs_o, k);
        if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 3) {
            PyErr_SetString(PyExc_ValueError, "fill_batches: each output is (ids, mask, types or None)");
            goto done;
        }
        if (get_buffer(PyTuple_GET_ITEM(o, 0), &bt->out, 1, 8, "out")) bt->taken++; else goto done;
        if (get_buffer(PyTuple_GET_ITEM(o, 1), &bt->mask, 1, 8, "mask")) bt->taken++; else goto done;
        if (typed) {
            if (get_buffer(PyTuple_GET_ITEM(o, 2), &bt->out_types, 1, 8, "out_types")) bt->taken++; else goto done;
        }
        Py_ssize_t size = bt->rows * bt->width * 8;
        if (bt->from < 0 || bt->rows < 0 || bt->from + bt->rows > n_order || bt->out.len != size ||
            bt->mask.len != size || (typed && bt->out_types.len != size)) {
            PyErr_Format(PyExc_ValueError, "fill_batches: batch %zd's outputs must be [rows, width]", k);
            goto done;
        }
        for (int64_t r = bt->from; r < bt->from + bt->rows; r++) {
            if (at[r] < 0 || at[r] >= n_items || b[at[r]] < 0 || b[at[r] + 1] > n_ids || b[at[r] + 1] < b[at[r]] ||
                b[at[r] + 1] - b[at[r]] > bt->width) {
                PyErr_Format(PyExc_ValueError, "fill_batches: item %lld is out of range or wider than %lld",
                             (long long)at[r], (long long)bt->width);
                goto done;
            }
        }
    }
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    Py_BEGIN_ALLOW_THREADS
    int64_t total = 0;
    for (Py_ssize_t k = 0; k < k_batches; k++) total += batches[k].rows * batches[k].width;
    int n = threads;
    if (n > total / MIN_FILL_TOKENS) n = (int)(total / MIN_FILL_TOKENS);
    if (n > k_batches) n = (int)k_batches;
    if (n < 1) n = 1;
    FillPart parts[MAX_THREADS];
    Py_ssize_t k = 0;
    int64_t seen = 0;
    for (int t = 0; t < n; t++) {
        parts[t] = (FillPart){ids.buf, ids.itemsize, b, at, typed ? types.buf : NULL, pad, left, batches, k, k};
        int64_t goal = total / n * (t + 1);
        if (t == n - 1) k = k_batches;
        else
            while (k < k_batches && (seen < goal || k == parts[t].first))
                seen += batches[k].rows * batches[k].width, k++;
        parts[t].last = k;
    }
    run_parallel(n, fill_part, parts, sizeof(FillPart));
    Py_END_ALLOW_THREADS
    fine = 1;
done:
    for (Py_ssize_t k = 0; k < k_batches; k++) {
        Py_buffer *views[] = {&batches[k].out, &batches[k].mask, &batches[k].out_types};
        for (int i = 0; i < batches[k].taken; i++) PyBuffer_Release(views[i]);
    }
    PyMem_Free(batches);
    Py_buffer *views[] = {&ids, &bounds, &order, &plan, &types};
    for (int i = 0; i < got; i++) PyBuffer_Release(views[i]);
    if (fine) Py_RETURN_NONE;
    return NULL;
}

static PyMethodDef wp_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))wp_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(texts, budget, left, head, tail, threads=1) -> (ids int32 bytes, lengths int64 bytes, flags uint8 "
     "bytes)\n\n"
     "Tokenize a list of texts: each text's tokens, truncated to `budget` (-1: all) from the right (left=False: "
     "the first ones kept) or the left, between the ids `head` and `tail`. A text that is not ASCII or holds an "
     "added token's content gets flag 0 and no ids. A large call is split into contiguous parts on up to "
     "`threads` threads."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject WordPieceType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "st_runtime._wordpiece.WordPiece",
    .tp_basicsize = sizeof(WordPiece),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "WordPiece(vocab, unk_id, prefix, max_chars, lower, clean, added): a WordPiece vocabulary for "
              "ASCII texts (see the module).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)wp_init,
    .tp_dealloc = (destructor)wp_dealloc,
    .tp_methods = wp_methods,
};

static PyMethodDef module_methods[] = {

    {"fill_batches", fill_batches, METH_VARARGS,
     "fill_batches(ids, bounds, order, plan, pad_id, left, outs, types, threads) -> None\n\n"
     "Write batches of flat token ids (int32 or int64; item i is ids[bounds[i]:bounds[i+1]]) into padded int64 "
     "arrays: plan is an int64 [k, 3] array of (start, end, width), batch j holding the items order[start:end]; "
     "outs[j] is (out, mask, out_types or None), each [end - start, width]: the ids padded with pad_id (on the "
     "left when left), the attention mask (1 at tokens) and, unless types is None, the type ids (int64, like ids). "
     "Without the interpreter lock; large plans on up to `threads` threads."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wordpiece",
                                    "BERT-style WordPiece on ASCII texts without the interpreter lock.", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__wordpiece(void) {
    if (PyType_Ready(&WordPieceType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&WordPieceType);
    if (PyModule_AddObject(m, "WordPiece", (PyObject *)&WordPieceType) < 0) {
        Py_DECREF(&WordPieceType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
