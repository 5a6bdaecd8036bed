/* The native transports' TLS layer: OpenSSL straight on the socket (a socket BIO), for HBONE.
 *
 * One TLS policy: the SSL_CTX is the one inside the mesh's `ssl.SSLContext` (shoal.identity builds it, the
 * one place where versions, certificates, trust and ALPN are set). CPython 3.11's `_ssl._SSLContext` holds
 * its `SSL_CTX *` right after the object header; before using it, the context's type is checked, and the
 * verify mode and version bounds read through OpenSSL must be the ones Python reports (native_io checks
 * that this extension links the OpenSSL that `ssl` does). The transport holds the Python context for its
 * whole life, and SSL_new takes a reference on the SSL_CTX.
 *
 * Errors are `ssl.SSLError`s made by native_io._ssl_error from OpenSSL's error queue (reason, library,
 * and for a refused certificate the verify code and message, as `ssl.SSLCertVerificationError`), so the
 * handlers of today see the same kind of error.
 */

#include "_native.h"
#include <errno.h>
#include <ctype.h>
#include <openssl/err.h>
#include <openssl/x509.h>

PyTypeObject *ssl_context_type;

enum { READ_AHEAD = 64 << 10 };

SSL_CTX *tls_context_of(PyObject *context) {
    if (ssl_context_type == NULL || !PyObject_TypeCheck(context, ssl_context_type)) {
        PyErr_SetString(PyExc_TypeError, "the native TLS transport needs an ssl.SSLContext");
        return NULL;
    }
    SSL_CTX *ctx = *(SSL_CTX **)((char *)context + sizeof(PyObject));
    if (ctx == NULL) {
        PyErr_SetString(PyExc_ValueError, "the ssl.SSLContext holds no SSL_CTX");
        return NULL;
    }
    /* The SSL_CTX must be one of the OpenSSL this extension links: an _ssl with an OpenSSL of its own (a
       static build of the same version) would pass the version check, and its SSL_CTX is not ours to use. */
    const SSL_METHOD *method = SSL_CTX_get_ssl_method(ctx);
    if (method != TLS_method() && method != TLS_client_method() && method != TLS_server_method()) {
        PyErr_SetString(PyExc_ValueError, "the ssl.SSLContext's SSL_CTX belongs to another OpenSSL than the "
                        "native transports link: this Python's _ssl carries its own OpenSSL");
        return NULL;
    }
    /* Read both ways: a layout that is not what we think shows here, before any handshake. */
    PyObject *mode = PyObject_GetAttrString(context, "verify_mode");
    PyObject *low = mode ? PyObject_GetAttrString(context, "minimum_version") : NULL;
    PyObject *high = low ? PyObject_GetAttrString(context, "maximum_version") : NULL;
    long m = mode ? PyLong_AsLong(mode) : -1, lo = low ? PyLong_AsLong(low) : -1, hi = high ? PyLong_AsLong(high) : -1;
    Py_XDECREF(mode); Py_XDECREF(low); Py_XDECREF(high);
    if (PyErr_Occurred()) return NULL;
    int expected = m == 0 ? SSL_VERIFY_NONE : m == 1 ? SSL_VERIFY_PEER
                                            : SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    int got = SSL_CTX_get_verify_mode(ctx) & (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
    /* TLSVersion.MINIMUM_SUPPORTED / MAXIMUM_SUPPORTED (-2, -1) are OpenSSL's 0: no bound. */
    long got_lo = SSL_CTX_get_min_proto_version(ctx), got_hi = SSL_CTX_get_max_proto_version(ctx);
    if (got != expected || (lo >= 0 ? got_lo != lo : got_lo != 0) || (hi >= 0 ? got_hi != hi : got_hi != 0)) {
        PyErr_Format(PyExc_ValueError, "the SSL_CTX read from the ssl.SSLContext does not match it (verify mode "
                     "%d/%d, versions %ld-%ld/%ld-%ld): this Python's _ssl layout is not the one expected",
                     got, expected, got_lo, got_hi, lo, hi);
        return NULL;
    }
    return ctx;
}

int tls_begin(Transport *t) {
    SSL_CTX *ctx = tls_context_of(t->context);
    if (ctx == NULL) return -1;
    ERR_clear_error();   /* what tls_error reports is this call's error, not an earlier user's */
    t->ssl = SSL_new(ctx);
    if (t->ssl == NULL || !SSL_set_fd(t->ssl, t->fd)) {
        tls_error("SSL_new", SSL_ERROR_SSL);
        return -1;
    }
    /* The write buffer may move between a blocked SSL_write and its retry (it grows), never its bytes. */
    SSL_set_mode(t->ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Read what the socket has, several records at a time, not a 5-byte header then a body per record:
       half the read calls on a busy stream. (What is read ahead is announced by SSL_has_pending, not by
       the socket: see read_some.) */
    SSL_set_read_ahead(t->ssl, 1);
    SSL_set_default_read_buffer_len(t->ssl, READ_AHEAD);
    if (t->server_side) SSL_set_accept_state(t->ssl); else SSL_set_connect_state(t->ssl);
    return 0;
}

/* OpenSSL's reason as CPython names it ("certificate verify failed" -> CERTIFICATE_VERIFY_FAILED), and its
   library by the first word ("SSL routines" -> SSL). */
static void reason_name(const char *text, char *out, size_t size, int first_word) {
    size_t i = 0;
    for (; text && text[i] && i + 1 < size; i++) {
        if (text[i] == ' ' && first_word) break;
        out[i] = text[i] == ' ' ? '_' : (char)toupper((unsigned char)text[i]);
    }
    out[i] = 0;
}

PyObject *tls_error(const char *where, int ssl_error) {
    unsigned long code = ERR_peek_last_error();
    const char *lib = code ? ERR_lib_error_string(code) : NULL, *reason = code ? ERR_reason_error_string(code) : NULL;
    char name[128], libname[64];
    reason_name(reason, name, sizeof name, 0);
    reason_name(lib, libname, sizeof libname, 1);
    ERR_clear_error();
    PyObject *exc = PyObject_CallFunction(error_factory, "isssls", ssl_error, name, libname, where, 0L, "");
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* An error from SSL_* on `t`: sets the exception. EOF-like cases return 1 for the caller to treat as EOF. */
static int failure(Transport *t, int rc, const char *where, int allow_eof) {
    int saved_errno = errno;
    int e = SSL_get_error(t->ssl, rc);
    unsigned long code = ERR_peek_last_error();
    if (allow_eof && (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && code == 0 && saved_errno == 0)
                      || (e == SSL_ERROR_SSL && ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING))) {
        ERR_clear_error();
        return 1;
    }
    if (e == SSL_ERROR_SYSCALL && code == 0) {
        int err = saved_errno ? saved_errno : ECONNRESET;   /* OSError makes ConnectionResetError of it */
        ERR_clear_error();
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, saved_errno ? strerror(err)
                                              : "the peer closed the connection during TLS");
        if (exc != NULL) { PyErr_SetObject((PyObject *)Py_TYPE(exc), exc); Py_DECREF(exc); }
        return 0;
    }
    if (e == SSL_ERROR_SSL && ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        long verify = SSL_get_verify_result(t->ssl);
        const char *message = X509_verify_cert_error_string(verify);
        char name[128];
        reason_name(ERR_reason_error_string(code), name, sizeof name, 0);
        ERR_clear_error();
        PyObject *exc = PyObject_CallFunction(error_factory, "isssls", e, name, "SSL", where, verify, message);
        if (exc != NULL) { PyErr_SetObject((PyObject *)Py_TYPE(exc), exc); Py_DECREF(exc); }
        return 0;
    }
    tls_error(where, e);
    return 0;
}

int tls_handshake_step(Transport *t) {
    ERR_clear_error();
    errno = 0;
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1) return 1;
    switch (SSL_get_error(t->ssl, rc)) {
    case SSL_ERROR_WANT_READ: return core_want(t, 1, 0) < 0 ? -1 : 0;
    case SSL_ERROR_WANT_WRITE: return core_want(t, 1, 1) < 0 ? -1 : 0;
    default: failure(t, rc, "the TLS handshake", 0); return -1;
    }
}

Py_ssize_t tls_read(Transport *t, char *buf, size_t room) {
    ERR_clear_error();
    errno = 0;
    int rc = SSL_read(t->ssl, buf, room > INT_MAX ? INT_MAX : (int)room);
    if (rc > 0) return rc;
    switch (SSL_get_error(t->ssl, rc)) {
    case SSL_ERROR_WANT_READ: return 0;
    case SSL_ERROR_WANT_WRITE:   /* a post-handshake message to answer: read again once writable */
        t->read_wants_write = 1;
        return core_want(t, 1, 1) < 0 ? -1 : 0;
    default: return failure(t, rc, "reading TLS", 1) ? -2 : -1;
    }
}

Py_ssize_t tls_write(Transport *t, const char *buf, size_t n) {
    ERR_clear_error();
    errno = 0;
    int rc = SSL_write(t->ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
    if (rc > 0) return rc;
    switch (SSL_get_error(t->ssl, rc)) {
    case SSL_ERROR_WANT_WRITE: return 0;
    case SSL_ERROR_WANT_READ: t->write_wants_read = 1; return 0;
    default: failure(t, rc, "writing TLS", 0); return -1;
    }
}

void tls_shutdown(Transport *t) {
    if (t->ssl != NULL && SSL_is_init_finished(t->ssl)) {
        SSL_shutdown(t->ssl);   /* our close_notify; the peer's is not waited for (the socket closes next) */
        ERR_clear_error();
    }
}

/* ---- ssl_object's part: what shoal.identity and the access log read ---------------------------------- */

static PyObject *tls_getpeercert(Transport *t, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"binary_form", NULL};
    int binary = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p", names, &binary)) return NULL;
    if (t->ssl == NULL || !SSL_is_init_finished(t->ssl)) {
        PyErr_SetString(PyExc_ValueError, "handshake not done yet");
        return NULL;
    }
    if (!binary) {
        PyErr_SetString(PyExc_ValueError, "the native TLS transport gives the peer certificate in binary form "
                        "only: call getpeercert(binary_form=True)");
        return NULL;
    }
    X509 *cert = SSL_get1_peer_certificate(t->ssl);
    if (cert == NULL) Py_RETURN_NONE;
    unsigned char *der = NULL;
    ERR_clear_error();
    int len = i2d_X509(cert, &der);
    X509_free(cert);
    if (len < 0) return tls_error("getpeercert", SSL_ERROR_SSL);
    PyObject *out = PyBytes_FromStringAndSize((const char *)der, len);
    OPENSSL_free(der);
    return out;
}

static PyObject *tls_version(Transport *t, PyObject *unused) {
    if (t->ssl == NULL || !SSL_is_init_finished(t->ssl)) Py_RETURN_NONE;
    return PyUnicode_FromString(SSL_get_version(t->ssl));
}

static PyObject *tls_cipher(Transport *t, PyObject *unused) {
    const SSL_CIPHER *cipher = t->ssl ? SSL_get_current_cipher(t->ssl) : NULL;
    if (cipher == NULL) Py_RETURN_NONE;
    return Py_BuildValue("ssi", SSL_CIPHER_get_name(cipher), SSL_CIPHER_get_version(cipher),
                         SSL_CIPHER_get_bits(cipher, NULL));
}

static PyObject *tls_alpn(Transport *t, PyObject *unused) {
    const unsigned char *name = NULL;
    unsigned int len = 0;
    if (t->ssl != NULL) SSL_get0_alpn_selected(t->ssl, &name, &len);
    if (name == NULL || len == 0) Py_RETURN_NONE;
    return PyUnicode_FromStringAndSize((const char *)name, len);
}

PyMethodDef tls_methods[] = {
    {"getpeercert", (PyCFunction)(void (*)(void))tls_getpeercert, METH_VARARGS | METH_KEYWORDS,
     "The peer's certificate, DER (binary_form=True), or None."},
    {"version", (PyCFunction)tls_version, METH_NOARGS, "The TLS version agreed, as ssl.SSLObject.version()."},
    {"cipher", (PyCFunction)tls_cipher, METH_NOARGS, "(name, protocol, bits), as ssl.SSLObject.cipher()."},
    {"selected_alpn_protocol", (PyCFunction)tls_alpn, METH_NOARGS, "The ALPN protocol agreed, or None."},
    {NULL}
};
