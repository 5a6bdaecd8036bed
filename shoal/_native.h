/* The native transports (shoal._native): what the transport core (_native_core.c) and its TLS layer
 * (_native_tls.c) share. See shoal/native_io.py for how they are chosen and made. */
#ifndef SHOAL_NATIVE_H
#define SHOAL_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/ssl.h>
#include "_native_api.h"

#define NATIVE_API 1

/* One established connection: its socket, and for HBONE its TLS session, driven by the running loop
 * through add_reader / add_writer. TCP and TLS share everything here (buffer, flow control, closing);
 * only the moving of bytes differs (tls_* below). */
typedef struct {
    PyObject_HEAD
    PyObject *loop, *protocol, *sock, *extra, *context, *waiter;
    PyObject *on_readable, *on_writable;   /* bound methods handed to the loop, made once */
    int fd;
    SSL *ssl;                              /* NULL for plain TCP */
    char *out;                             /* bytes accepted by write() and not yet sent: out[pos, len) */
    size_t out_pos, out_len, out_cap;
    size_t tls_retry;                      /* an SSL_write that wanted to wait: retried with this length */
    size_t high_water, low_water;
    unsigned reading_paused : 1, reader_on : 1, writer_on : 1, closing : 1, closed : 1, eof_asked : 1,
             eof_sent : 1, protocol_paused : 1, handshaking : 1, server_side : 1, write_wants_read : 1,
             read_done : 1, made : 1, read_wants_write : 1;
} Transport;

/* The TLS layer (_native_tls.c). */
SSL_CTX *tls_context_of(PyObject *context);                    /* NULL and an exception if not usable */
int tls_begin(Transport *t);                                   /* -1 with an exception */
/* One step of the handshake: 1 done, 0 waiting (reader/writer set as needed), -1 failed (exception set,
   an ssl.SSLError made through the error factory). */
int tls_handshake_step(Transport *t);
/* Reads up to `room` plaintext bytes: >0 bytes, 0 would block, -2 EOF (close_notify or the peer's FIN),
   -1 error (exception set). */
Py_ssize_t tls_read(Transport *t, char *buf, size_t room);
/* Writes out[pos, pos + n): >0 written, 0 would block, -1 error (exception set). */
Py_ssize_t tls_write(Transport *t, const char *buf, size_t n);
void tls_shutdown(Transport *t);                               /* close_notify, best effort */
PyObject *tls_error(const char *where, int ssl_error);        /* the ssl.SSLError for OpenSSL's error queue */
extern PyMethodDef tls_methods[];                              /* ssl_object's part: getpeercert, version... */

/* From the core, for the TLS layer. */
int core_want(Transport *t, int reader, int writer);           /* (un)registers with the loop; -1 on error */
extern PyObject *error_factory;          /* native_io._ssl_error(kind, reason, library, where, verify code, message) */
extern PyTypeObject *ssl_context_type;   /* _ssl._SSLContext */

#endif
