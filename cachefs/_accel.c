/*
 * cachefs._accel: batch decryption of gocryptfs v2 content blocks over OpenSSL EVP.
 *
 * Why native: one AES-GCM call per 4 KiB block from Python costs about as much interpreter
 * overhead as crypto, which capped the pure-Python FUSE read path below stock gocryptfs
 * (shared/reference/cachefs.md section 3). One call here decrypts a whole FUSE request with the
 * GIL released.
 *
 * GcmBatch(key)                                   key: 32-byte AES-256 content key
 * GcmBatch.decrypt(src, dst, file_id, first_block) -> int
 *   src        N consecutive ciphertext blocks (16-byte nonce || data || 16-byte tag); every block
 *              is 4128 bytes except possibly the last, which must hold at least one data byte
 *   dst        writable buffer of at least the plaintext length; must not overlap src
 *   file_id    16-byte file ID from the file header
 *   first_block block number of the first block in src (AAD = uint64_be(block) || file_id)
 * Returns -1 when every block authenticated, else the index (0-based, within src) of the first
 * block whose tag failed. The plaintext bytes of that failing block are wiped before returning
 * and blocks after it are not touched, so no unauthenticated byte is ever left in dst. Hole
 * semantics (all-zero blocks) are deliberately left to the caller so both engines share them.
 *
 * The object keeps one keyed EVP context (key schedule done once, about half the cost of a
 * single-block call). The GIL is released while decrypting, so a second thread that finds the
 * context busy gets a private one for that call instead of waiting.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <stdint.h>
#include <string.h>

#define NONCE_LEN 16
#define TAG_LEN 16
#define OVERHEAD (NONCE_LEN + TAG_LEN)
#define PLAIN_BLOCK 4096
#define CIPHER_BLOCK (PLAIN_BLOCK + OVERHEAD)
#define KEY_LEN 32
#define FILE_ID_LEN 16

#define RC_CONTEXT_ERROR (-2)

static EVP_CIPHER *fetched_gcm = NULL; /* OpenSSL 3: fetched once, not on every init */

static const EVP_CIPHER *gcm_cipher(void) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    if (fetched_gcm != NULL) {
        return fetched_gcm;
    }
#endif
    return EVP_aes_256_gcm();
}

static EVP_CIPHER_CTX *new_keyed_ctx(const unsigned char *key) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        return NULL;
    }
    if (EVP_DecryptInit_ex(ctx, gcm_cipher(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
        EVP_DecryptInit_ex(ctx, NULL, NULL, key, NULL) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Runs without the GIL: touches only the raw buffers it is given. */
static Py_ssize_t decrypt_run(EVP_CIPHER_CTX *ctx, const unsigned char *src, Py_ssize_t src_len,
                              unsigned char *dst, const unsigned char *file_id, uint64_t first_block) {
    unsigned char aad[8 + FILE_ID_LEN];
    unsigned char tag[TAG_LEN];
    Py_ssize_t pos = 0, index = 0;
    int outl = 0;

    memcpy(aad + 8, file_id, FILE_ID_LEN);
    while (pos < src_len) {
        Py_ssize_t clen = src_len - pos;
        uint64_t block = first_block + (uint64_t)index;
        const unsigned char *in = src + pos;
        unsigned char *out = dst + index * PLAIN_BLOCK;
        int ok;
        if (clen > CIPHER_BLOCK) {
            clen = CIPHER_BLOCK;
        }
        clen -= OVERHEAD; /* > 0: checked before the GIL was released */
        for (int i = 0; i < 8; i++) {
            aad[i] = (unsigned char)(block >> (56 - 8 * i));
        }
        memcpy(tag, in + NONCE_LEN + clen, TAG_LEN);
        ok = EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, in) == 1 &&
             EVP_DecryptUpdate(ctx, NULL, &outl, aad, (int)sizeof(aad)) == 1 &&
             EVP_DecryptUpdate(ctx, out, &outl, in + NONCE_LEN, (int)clen) == 1 &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1 &&
             EVP_DecryptFinal_ex(ctx, out + outl, &outl) == 1;
        if (!ok) {
            OPENSSL_cleanse(out, (size_t)clen); /* never leave unauthenticated plaintext behind */
            return index;
        }
        pos += clen + OVERHEAD;
        index++;
    }
    return -1;
}

static int overlaps(const Py_buffer *a, const Py_buffer *b) {
    const char *a0 = (const char *)a->buf, *b0 = (const char *)b->buf;
    return a->len > 0 && b->len > 0 && a0 < b0 + b->len && b0 < a0 + a->len;
}

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ctx;         /* keyed once; used by whoever holds `lock` */
    PyThread_type_lock lock;
    unsigned char key[KEY_LEN];  /* for private contexts when `ctx` is busy; wiped on dealloc */
} GcmBatch;

static int gcmbatch_init(GcmBatch *self, PyObject *args, PyObject *kwds) {
    Py_buffer key = {0};
    static char *kwlist[] = {"key", NULL};

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:GcmBatch", kwlist, &key)) {
        return -1;
    }
    if (key.len != KEY_LEN) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "GcmBatch: key must be 32 bytes");
        return -1;
    }
    if (self->ctx != NULL) { /* another thread may be using it without the GIL */
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_RuntimeError, "GcmBatch: already initialised");
        return -1;
    }
    memcpy(self->key, key.buf, KEY_LEN);
    PyBuffer_Release(&key);
    self->ctx = new_keyed_ctx(self->key);
    if (self->lock == NULL) {
        self->lock = PyThread_allocate_lock();
    }
    if (self->ctx == NULL || self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "GcmBatch: OpenSSL could not set up AES-256-GCM");
        return -1;
    }
    return 0;
}

static void gcmbatch_dealloc(GcmBatch *self) {
    if (self->ctx != NULL) {
        EVP_CIPHER_CTX_free(self->ctx);
    }
    if (self->lock != NULL) {
        PyThread_free_lock(self->lock);
    }
    OPENSSL_cleanse(self->key, KEY_LEN);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *gcmbatch_decrypt(GcmBatch *self, PyObject *args) {
    Py_buffer src = {0}, dst = {0}, fid = {0};
    PyObject *first_obj = NULL;
    unsigned long long first_block = 0;
    Py_ssize_t nblocks, last, plain_len, result = RC_CONTEXT_ERROR;
    PyObject *ret = NULL;

    if (self->ctx == NULL || self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "GcmBatch: not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*w*y*O!:decrypt", &src, &dst, &fid, &PyLong_Type, &first_obj)) {
        return NULL;
    }
    first_block = PyLong_AsUnsignedLongLong(first_obj);
    if (first_block == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "decrypt: first_block must be in 0..2**64-1");
        goto done;
    }
    if (fid.len != FILE_ID_LEN) {
        PyErr_SetString(PyExc_ValueError, "decrypt: file_id must be 16 bytes");
        goto done;
    }
    nblocks = (src.len + CIPHER_BLOCK - 1) / CIPHER_BLOCK;
    last = src.len - (nblocks - 1) * CIPHER_BLOCK;
    if (nblocks > 0 && last <= OVERHEAD) {
        PyErr_SetString(PyExc_ValueError, "decrypt: the last ciphertext block holds no data");
        goto done;
    }
    plain_len = src.len - nblocks * OVERHEAD;
    if (dst.len < plain_len) {
        PyErr_SetString(PyExc_ValueError, "decrypt: dst is smaller than the plaintext");
        goto done;
    }
    if (overlaps(&src, &dst)) {
        PyErr_SetString(PyExc_ValueError, "decrypt: src and dst overlap");
        goto done;
    }
    if (nblocks > 0 && (unsigned long long)(nblocks - 1) > UINT64_MAX - first_block) {
        PyErr_SetString(PyExc_ValueError, "decrypt: block number overflows 64 bits");
        goto done;
    }
    if (nblocks == 0) {
        ret = PyLong_FromLong(-1);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        result = decrypt_run(self->ctx, (const unsigned char *)src.buf, src.len, (unsigned char *)dst.buf,
                             (const unsigned char *)fid.buf, (uint64_t)first_block);
        PyThread_release_lock(self->lock);
    } else {
        EVP_CIPHER_CTX *own = new_keyed_ctx(self->key);
        if (own != NULL) {
            result = decrypt_run(own, (const unsigned char *)src.buf, src.len, (unsigned char *)dst.buf,
                                 (const unsigned char *)fid.buf, (uint64_t)first_block);
            EVP_CIPHER_CTX_free(own);
        }
    }
    Py_END_ALLOW_THREADS
    if (result == RC_CONTEXT_ERROR) {
        PyErr_SetString(PyExc_RuntimeError, "decrypt: OpenSSL could not set up AES-256-GCM");
        goto done;
    }
    ret = PyLong_FromSsize_t(result);
done:
    if (src.obj) PyBuffer_Release(&src);
    if (dst.obj) PyBuffer_Release(&dst);
    if (fid.obj) PyBuffer_Release(&fid);
    return ret;
}

static PyMethodDef gcmbatch_methods[] = {
    {"decrypt", (PyCFunction)gcmbatch_decrypt, METH_VARARGS,
     "decrypt(src, dst, file_id, first_block) -> index of the first failing block, or -1"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GcmBatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cachefs._accel.GcmBatch",
    .tp_doc = "GcmBatch(key): batch AES-256-GCM decryption of gocryptfs content blocks",
    .tp_basicsize = sizeof(GcmBatch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)gcmbatch_init,
    .tp_dealloc = (destructor)gcmbatch_dealloc,
    .tp_methods = gcmbatch_methods,
};

static PyObject *accel_openssl_version(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(OpenSSL_version(OPENSSL_VERSION));
}

static PyMethodDef accel_methods[] = {
    {"openssl_version", accel_openssl_version, METH_NOARGS, "OpenSSL version string this module runs with"},
    {NULL, NULL, 0, NULL},
};

static void accel_free(void *module) {
    (void)module;
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    if (fetched_gcm != NULL) {
        EVP_CIPHER_free(fetched_gcm);
        fetched_gcm = NULL;
    }
#endif
}

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT, "_accel", "Batch AES-256-GCM decryption of gocryptfs blocks (OpenSSL EVP).", -1,
    accel_methods, NULL, NULL, NULL, accel_free,
};

PyMODINIT_FUNC PyInit__accel(void) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    if (fetched_gcm == NULL) {
        fetched_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    }
#endif
    PyObject *module;
    if (PyType_Ready(&GcmBatchType) < 0) {
        return NULL;
    }
    module = PyModule_Create(&accel_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&GcmBatchType);
    if (PyModule_AddObject(module, "GcmBatch", (PyObject *)&GcmBatchType) < 0) {
        Py_DECREF(&GcmBatchType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
