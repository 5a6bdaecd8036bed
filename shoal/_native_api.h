/* What the native transports (shoal._native) offer the compiled lane (shoal._relay) in C, through the
 * capsule shoal._native.C_API: a write straight from the lane's buffers, with no Python object and no
 * Python-level call. No OpenSSL here: the lane builds without libssl. */
#ifndef SHOAL_NATIVE_API_H
#define SHOAL_NATIVE_API_H

#include <Python.h>

#define NATIVE_C_API_VERSION 3

typedef struct {
    int version;
    PyTypeObject *transport_type;   /* shoal._native.Transport */
    /* transport.write(a + b) (b may be NULL): 1 written or buffered, 0 dropped (closing, as asyncio drops
       it), -1 error with an exception set. With `more`, only buffered: the last call of a batch sends it
       all (several DATA frames in one SSL_write); `more` writes still pause the protocol past the high
       water mark, as any write does. */
    int (*write)(PyObject *transport, const char *a, size_t a_len, const char *b, size_t b_len, int more);
    int (*is_closing)(PyObject *transport);
    int (*flush)(PyObject *transport);    /* sends what `more` writes left buffered: 0, or -1 with an exception */
    /* The lane's reader, offered each read before data_received: reader(protocol, buffer, size) returns 1 when
       it took the read (the buffer is only lent for the call), 0 when the protocol is not the lane's (then
       data_received gets bytes), -1 with an exception (as a data_received that raised). */
    void (*set_reader)(int (*reader)(PyObject *protocol, const char *data, Py_ssize_t size));
} NativeApi;

#endif
