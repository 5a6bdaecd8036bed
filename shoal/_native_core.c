/* The native transports' core: one established connection's socket, owned in C and driven by the running
 * event loop (uvloop) through add_reader / add_writer with C callables.
 *
 * Why: with uvloop's transports, each read made a Python-level protocol call through uvloop's Cython,
 * and for HBONE through its SSL protocol (memory BIOs, `ssl.SSLObject`'s wrappers, a bytes object per
 * layer). Here a read is one recv (or SSL_read straight off the socket) into one buffer, lent to the compiled
 * lane in C when the protocol is the lane's (NativeApi.set_reader), else handed over as one bytes object; a
 * write is one send (or SSL_write) from one buffer, with no Python code between.
 *
 * The asyncio Transport contract as the existing protocols use it: write, writelines, write_eof /
 * can_write_eof (TCP), close (flush, then close), abort, is_closing, get_extra_info, pause_reading /
 * resume_reading, set_write_buffer_limits / get_write_buffer_size with pause_writing / resume_writing on
 * the protocol; connection_made, data_received, eof_received, then connection_lost (scheduled with
 * call_soon, once, as asyncio does). TCP and TLS share all of it; only moving bytes differs
 * (_native_tls.c for TLS).
 */

#include "_native.h"
#include <errno.h>
#include <sys/socket.h>
#include <openssl/err.h>
#include <openssl/crypto.h>

enum { READ_SIZE = 256 << 10,     /* per readable event: many frames' worth (one stream's throughput) */
       TLS_WRITE_MAX = 256 << 10, /* per SSL_write: several records, several DATA frames */
       DEFAULT_HIGH = 64 << 10,
       KEEP_BUFFER = 256 << 10 };  /* the write buffer kept once empty (larger ones are freed) */

PyObject *error_factory;
static PyObject *s_add_reader, *s_remove_reader, *s_add_writer, *s_remove_writer, *s_call_soon,
                *s_connection_made, *s_data_received, *s_eof_received, *s_connection_lost, *s_pause_writing,
                *s_resume_writing, *s_close, *s_set_result, *s_set_exception, *s_done, *s_lost, *s_on_readable;
static char scratch[READ_SIZE];   /* one read at a time per process (the loop's thread), copied out at once or
                                     lent to the lane's reader for its call (then `lent`) */
static char drained[READ_SIZE];   /* a closing socket's unread bytes, dropped (never while scratch is lent) */
static int lent;
static int (*lane_reader)(PyObject *protocol, const char *data, Py_ssize_t size);

/* ---- the loop ---------------------------------------------------------------------------------------- */

/* Registers with the loop or unregisters, for reading or writing; a closed socket is never registered. */
static int watch(Transport *t, int writer, int on) {
    unsigned current = writer ? t->writer_on : t->reader_on;
    on = !!on;
    if (t->closed || current == (unsigned)on) return 0;
    PyObject *fd = PyLong_FromLong(t->fd);
    if (fd == NULL) return -1;
    PyObject *r = on ? PyObject_CallMethodObjArgs(t->loop, writer ? s_add_writer : s_add_reader, fd,
                                                  writer ? t->on_writable : t->on_readable, NULL)
                     : PyObject_CallMethodObjArgs(t->loop, writer ? s_remove_writer : s_remove_reader, fd, NULL);
    Py_DECREF(fd);
    if (r == NULL) return -1;
    Py_DECREF(r);
    if (writer) t->writer_on = on; else t->reader_on = on;
    return 0;
}

int core_want(Transport *t, int reader, int writer) {
    return watch(t, 0, reader) < 0 || watch(t, 1, writer) < 0 ? -1 : 0;
}

static int call_soon(Transport *t, PyObject *callable, PyObject *arg) {
    PyObject *r = PyObject_CallMethodObjArgs(t->loop, s_call_soon, callable, arg, NULL);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static int call_protocol(Transport *t, PyObject *name, PyObject *arg) {
    if (t->protocol == NULL) return 0;
    PyObject *r = arg ? PyObject_CallMethodOneArg(t->protocol, name, arg) : PyObject_CallMethodNoArgs(t->protocol, name);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* ---- closing ----------------------------------------------------------------------------------------- */

/* Closes the socket now; connection_lost(exc) follows on the loop if connection_made was called. */
static int force_close(Transport *t, PyObject *exc) {
    if (t->closed) return 0;
    t->closing = 1;
    int rc = core_want(t, 0, 0);
    t->closed = 1;
    t->out_pos = t->out_len = t->out_cap = t->tls_retry = 0;
    PyMem_RawFree(t->out);
    t->out = NULL;
    PyObject *r = PyObject_CallMethodNoArgs(t->sock, s_close);
    if (r == NULL) rc = -1;
    Py_XDECREF(r);
    t->fd = -1;
    /* Nothing registers or schedules the callbacks of a closed transport (watch and the call_soons check
       `closed`). Dropped now, they no longer hold the transport in a cycle with itself: it goes, with its TLS
       session and buffers, when its last reference does, not at the collector's next full pass. (A running
       callback is held by its caller.) */
    Py_CLEAR(t->on_readable);
    Py_CLEAR(t->on_writable);
    if (t->made) {
        PyObject *lost = PyObject_GetAttr((PyObject *)t, s_lost);
        if (lost == NULL || call_soon(t, lost, exc ? exc : Py_None) < 0) rc = -1;
        Py_XDECREF(lost);
    }
    return rc;
}

/* A socket error: the connection is over, and the protocol hears why. */
static int fatal_errno(Transport *t, int err) {
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
    if (exc == NULL) return -1;
    int rc = force_close(t, exc);
    Py_DECREF(exc);
    return rc;
}

static int fatal_pending(Transport *t) {   /* the exception set now ends the connection */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
    Py_XDECREF(type); Py_XDECREF(tb);
    int rc = force_close(t, value);
    Py_XDECREF(value);
    return rc;
}

/* A protocol callback raised. As asyncio's transports do, the loop's exception handler hears it and the
   connection ends with it (connection_lost(exc)): the protocol's state is whatever the exception left, and
   the next read must not be handed to it. */
static int protocol_failed(Transport *t, const char *callback) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
    Py_XDECREF(type); Py_XDECREF(tb);
    char message[96];
    snprintf(message, sizeof message, "Fatal error: protocol.%s() call failed.", callback);
    PyObject *context = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", message, "exception", value ? value : Py_None,
                                      "transport", (PyObject *)t, "protocol", t->protocol ? t->protocol : Py_None);
    PyObject *r = context ? PyObject_CallMethod(t->loop, "call_exception_handler", "O", context) : NULL;
    if (r == NULL) PyErr_WriteUnraisable(t->loop);
    Py_XDECREF(r); Py_XDECREF(context);
    int rc = force_close(t, value);
    Py_XDECREF(value);
    return rc;
}

/* A graceful close. Bytes the peer sent that nobody read (a TLS 1.3 session ticket, say) would make the
   kernel answer close() with a RST and drop what is still in our send queue, the close_notify and the last
   data with it: they are read off and dropped first. */
static int finish_close(Transport *t) {
    if (t->ssl != NULL && !t->handshaking) tls_shutdown(t);
    for (int i = 0; i < 16 && recv(t->fd, drained, READ_SIZE, MSG_DONTWAIT) > 0; i++)
        ;
    return force_close(t, NULL);
}

/* ---- writing ----------------------------------------------------------------------------------------- */

static size_t buffered(Transport *t) { return t->out_len - t->out_pos; }

static int append(Transport *t, const char *data, size_t n) {
    if (t->out_pos == t->out_len) t->out_pos = t->out_len = 0;
    if (t->out_len + n > t->out_cap) {
        if (t->out_pos > 0 && t->tls_retry == 0) {   /* a retried SSL_write keeps its bytes where they are */
            memmove(t->out, t->out + t->out_pos, buffered(t));
            t->out_len -= t->out_pos;
            t->out_pos = 0;
        }
        if (n > SIZE_MAX / 4 - t->out_len) { PyErr_NoMemory(); return -1; }   /* the doubling below would wrap */
        if (t->out_len + n > t->out_cap) {
            size_t cap = t->out_cap ? t->out_cap : 64 << 10;
            while (cap < t->out_len + n) cap *= 2;
            char *grown = PyMem_RawRealloc(t->out, cap);   /* SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER allows it */
            if (grown == NULL) { PyErr_NoMemory(); return -1; }
            t->out = grown;
            t->out_cap = cap;
        }
    }
    memcpy(t->out + t->out_len, data, n);
    t->out_len += n;
    return 0;
}

/* Sends what is buffered until the socket would block; then waits for writable. -1 only for errors of
   ours (the connection's own errors end it, as asyncio does, and return 0). */
static int flush(Transport *t) {
    while (!t->closed && t->out_pos < t->out_len && !t->handshaking) {
        size_t n = buffered(t);
        Py_ssize_t sent;
        if (t->ssl != NULL) {
            if (t->tls_retry) n = t->tls_retry;
            else if (n > TLS_WRITE_MAX) n = TLS_WRITE_MAX;
            sent = tls_write(t, t->out + t->out_pos, n);
            if (sent < 0) return fatal_pending(t);
            t->tls_retry = sent == 0 ? n : 0;
            if (sent == 0 && t->write_wants_read) return core_want(t, 1, 0);   /* only a read can unblock it: a writer left on would spin */
        } else {
            sent = send(t->fd, t->out + t->out_pos, n, MSG_NOSIGNAL);
            if (sent < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) sent = 0;
                else return fatal_errno(t, errno);
            }
        }
        if (sent == 0) return watch(t, 1, 1);
        t->out_pos += (size_t)sent;
    }
    if (t->closed || t->handshaking) return 0;
    if (watch(t, 1, 0) < 0) return -1;
    t->out_pos = t->out_len = 0;
    if (t->out_cap > KEEP_BUFFER) {   /* a buffer a slow reader made large is not kept for the connection's life */
        PyMem_RawFree(t->out);
        t->out = NULL;
        t->out_cap = 0;
    }
    if (t->eof_asked && !t->eof_sent) {
        t->eof_sent = 1;
        if (shutdown(t->fd, SHUT_WR) < 0 && errno != ENOTCONN) return fatal_errno(t, errno);
    }
    if (t->closing) return finish_close(t);
    if (t->protocol_paused) {
        t->protocol_paused = 0;
        return call_protocol(t, s_resume_writing, NULL);
    }
    return 0;
}

static int after_write(Transport *t) {
    if (flush(t) < 0) return -1;
    if (!t->closed && !t->protocol_paused && buffered(t) > t->high_water) {
        t->protocol_paused = 1;
        return call_protocol(t, s_pause_writing, NULL);
    }
    if (!t->closed && t->protocol_paused && buffered(t) <= t->low_water) {
        t->protocol_paused = 0;
        return call_protocol(t, s_resume_writing, NULL);
    }
    return 0;
}

static int check_writable(Transport *t) {
    if (t->eof_asked) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return -1;
    }
    return !(t->closing || t->closed);   /* asyncio drops writes to a closing transport */
}

/* write(a + b) for a writable transport (b may be NULL): 1 done, -1 error. */
static int write_two(Transport *t, const char *a, size_t a_len, const char *b, size_t b_len, int more) {
    int rc = 0;
    if (b == NULL && !more && t->ssl == NULL && buffered(t) == 0 && !t->handshaking) {   /* TCP: to the socket */
        Py_ssize_t sent;
        do sent = send(t->fd, a, a_len, MSG_NOSIGNAL); while (sent < 0 && errno == EINTR);
        if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return fatal_errno(t, errno) < 0 ? -1 : 1;
        if (sent < 0) sent = 0;
        if ((size_t)sent < a_len) rc = append(t, a + sent, a_len - sent);
    } else {   /* joined: a DATA frame's header and payload make one TLS record */
        rc = append(t, a, a_len);
        if (rc == 0 && b != NULL) rc = append(t, b, b_len);
    }
    if (rc == 0 && more) {   /* sent by a later write or flush; the protocol still hears it is full now */
        if (!t->protocol_paused && buffered(t) > t->high_water) {
            t->protocol_paused = 1;
            if (call_protocol(t, s_pause_writing, NULL) < 0) return -1;
        }
        return 1;
    }
    return rc < 0 || after_write(t) < 0 ? -1 : 1;
}

static PyObject *transport_write(Transport *t, PyObject *data) {
    Py_buffer view;
    int ok = check_writable(t);
    if (ok <= 0) { if (ok < 0) return NULL; Py_RETURN_NONE; }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    int rc = view.len > 0 ? write_two(t, view.buf, view.len, NULL, 0, 0) : 1;
    PyBuffer_Release(&view);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

/* The lane's entry (NativeApi.write): the same as write(), from C buffers. */
static int api_write(PyObject *obj, const char *a, size_t a_len, const char *b, size_t b_len, int more) {
    Transport *t = (Transport *)obj;
    int ok = check_writable(t);
    if (ok <= 0 || a_len + b_len == 0) return ok;
    return write_two(t, a, a_len, b_len ? b : NULL, b_len, more);
}

static int api_is_closing(PyObject *obj) { return ((Transport *)obj)->closing || ((Transport *)obj)->closed; }

static int api_flush(PyObject *obj) { return ((Transport *)obj)->closed ? 0 : after_write((Transport *)obj); }

static void api_set_reader(int (*reader)(PyObject *, const char *, Py_ssize_t)) { lane_reader = reader; }

static PyObject *transport_writelines(Transport *t, PyObject *chunks) {
    int ok = check_writable(t);
    if (ok <= 0) { if (ok < 0) return NULL; Py_RETURN_NONE; }
    PyObject *iter = PyObject_GetIter(chunks), *item;
    if (iter == NULL) return NULL;
    while ((item = PyIter_Next(iter)) != NULL) {   /* joined, so a frame and its header make one TLS record */
        Py_buffer view;
        int rc = PyObject_GetBuffer(item, &view, PyBUF_SIMPLE);
        Py_DECREF(item);
        if (rc == 0) { rc = append(t, view.buf, view.len); PyBuffer_Release(&view); }
        if (rc < 0) { Py_DECREF(iter); return NULL; }
    }
    Py_DECREF(iter);
    if (PyErr_Occurred() || after_write(t) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *transport_can_write_eof(Transport *t, PyObject *unused) {
    return PyBool_FromLong(t->ssl == NULL);
}

static PyObject *transport_write_eof(Transport *t, PyObject *unused) {
    if (t->ssl != NULL) {
        PyErr_SetString(PyExc_NotImplementedError, "a TLS transport cannot half-close (can_write_eof() is False)");
        return NULL;
    }
    if (t->closing || t->closed || t->eof_asked) Py_RETURN_NONE;
    t->eof_asked = 1;
    if (flush(t) < 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- reading ----------------------------------------------------------------------------------------- */

static int on_eof(Transport *t) {
    t->read_done = 1;
    if (watch(t, 0, 0) < 0) return -1;
    PyObject *keep = t->protocol ? PyObject_CallMethodNoArgs(t->protocol, s_eof_received) : Py_NewRef(Py_None);
    if (keep == NULL) return protocol_failed(t, "eof_received");
    int open = t->ssl == NULL && PyObject_IsTrue(keep) > 0;   /* TLS closes after EOF, as asyncio's SSL */
    Py_DECREF(keep);
    if (open || t->closing) return 0;
    t->closing = 1;
    return buffered(t) ? flush(t) : finish_close(t);
}

/* One readable event: at most one scratch buffer's worth, handed over as one bytes object. */
static int read_some(Transport *t) {
    if (t->closed || t->closing || t->reading_paused || t->read_done) return 0;
    if (lent) return call_soon(t, t->on_readable, NULL);   /* a read from within the lane's: the loop's next pass */
    Py_ssize_t got = 0, status = 0;
    if (t->ssl != NULL) {
        while (got < READ_SIZE) {
            status = tls_read(t, scratch + got, READ_SIZE - got);
            if (status <= 0) break;
            got += status;
            status = 0;
            /* Nothing left inside OpenSSL: the socket was read dry by the read ahead, most likely, and a read
               now would mostly be an EAGAIN (a syscall per message); if more came, the loop says so. */
            if (!SSL_has_pending(t->ssl)) break;
        }
        if (status == -1) return fatal_pending(t);
    } else {
        do status = recv(t->fd, scratch, READ_SIZE, 0); while (status < 0 && errno == EINTR);
        if (status < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return fatal_errno(t, errno);
        }
        if (status == 0) status = -2;
        else { got = status; status = 0; }
    }
    if (got > 0 && t->protocol != NULL) {
        int rc = 0;
        if (lane_reader != NULL) {   /* the lane takes the bytes where they are */
            PyObject *protocol = Py_NewRef(t->protocol);
            lent = 1;
            rc = lane_reader(protocol, scratch, got);
            lent = 0;
            Py_DECREF(protocol);
        }
        if (rc == 0) {
            PyObject *data = PyBytes_FromStringAndSize(scratch, got);
            if (data == NULL) return -1;
            rc = call_protocol(t, s_data_received, data);
            Py_DECREF(data);
        }
        if (rc < 0) return protocol_failed(t, "data_received");
    }
    if (status == -2 && !t->closed && !t->closing) return on_eof(t);   /* a closing transport hears no more */
    /* A full buffer may leave bytes inside OpenSSL (read ahead, or decrypted), which no readable event
       announces. */
    if (t->ssl != NULL && got == READ_SIZE && !t->closed && !t->reading_paused && SSL_has_pending(t->ssl))
        return call_soon(t, t->on_readable, NULL);
    return 0;
}

static int handshake_failed(Transport *t);

/* The handshake's waiter gets its result or exception, unless it is done already (cancelled by its caller,
   or timed out): setting a done future raises InvalidStateError into the loop's callback. */
static int settle_waiter(Transport *t, PyObject *method, PyObject *arg) {
    if (t->waiter == NULL) return 0;
    PyObject *done = PyObject_CallMethodNoArgs(t->waiter, s_done);
    if (done == NULL) return -1;
    int finished = PyObject_IsTrue(done);
    Py_DECREF(done);
    if (finished != 0) return finished < 0 ? -1 : 0;
    PyObject *r = PyObject_CallMethodOneArg(t->waiter, method, arg);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static int handshake_done(Transport *t) {
    t->handshaking = 0;
    t->made = 1;
    /* A connection_made that raised fails the handshake's waiter now (not as a timeout later). */
    if (call_protocol(t, s_connection_made, (PyObject *)t) < 0) return handshake_failed(t);
    if (settle_waiter(t, s_set_result, Py_None) < 0) return -1;
    if (t->closed) return 0;
    if (core_want(t, !t->reading_paused, 0) < 0 || flush(t) < 0) return -1;
    return read_some(t);
}

static int handshake_failed(Transport *t) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    Py_XDECREF(type); Py_XDECREF(tb);
    int rc = force_close(t, NULL);
    if (rc == 0 && settle_waiter(t, s_set_exception, value) < 0) rc = -1;
    Py_XDECREF(value);
    return rc;
}

/* The next step of the TLS handshake, on either event (OpenSSL says which one it waits for). */
static int handshake_event(Transport *t) {
    int rc = tls_handshake_step(t);
    return rc < 0 ? handshake_failed(t) : rc == 1 ? handshake_done(t) : 0;
}

static PyObject *transport_on_readable(Transport *t, PyObject *unused) {
    int rc = 0;
    if (t->closed) Py_RETURN_NONE;
    if (t->handshaking) {
        rc = handshake_event(t);
    } else {
        if (t->write_wants_read) {
            t->write_wants_read = 0;
            if (watch(t, 0, !t->reading_paused && !t->read_done) < 0 || flush(t) < 0) return NULL;
        }
        rc = read_some(t);
    }
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *transport_on_writable(Transport *t, PyObject *unused) {
    int rc = 0;
    if (t->closed) Py_RETURN_NONE;
    if (t->handshaking) {
        rc = handshake_event(t);
    } else {
        int read_too = t->read_wants_write;   /* an SSL_read that had to write first (a post-handshake answer) */
        t->read_wants_write = 0;
        rc = after_write(t);
        /* What OpenSSL holds already is announced by no readable event: read it now. */
        if (rc == 0 && read_too) rc = read_some(t);
    }
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *transport_pause_reading(Transport *t, PyObject *unused) {
    t->reading_paused = 1;
    if (!t->handshaking && watch(t, 0, t->write_wants_read) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *transport_resume_reading(Transport *t, PyObject *unused) {
    if (!t->reading_paused) Py_RETURN_NONE;
    t->reading_paused = 0;
    if (t->closing || t->closed || t->handshaking || t->read_done) Py_RETURN_NONE;
    if (watch(t, 0, 1) < 0) return NULL;
    /* Bytes OpenSSL read or decrypted before the pause wait inside it: no readable event will say so. */
    if (t->ssl != NULL && SSL_has_pending(t->ssl) && call_soon(t, t->on_readable, NULL) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *transport_is_reading(Transport *t, PyObject *unused) {
    return PyBool_FromLong(!t->reading_paused && !t->closing && !t->closed);
}

/* ---- the rest of the contract ------------------------------------------------------------------------ */

static PyObject *transport_close(Transport *t, PyObject *unused) {
    if (t->closing || t->closed) Py_RETURN_NONE;
    t->closing = 1;
    if (watch(t, 0, 0) < 0) return NULL;
    if ((buffered(t) && !t->handshaking ? flush(t) : finish_close(t)) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *transport_abort(Transport *t, PyObject *unused) {
    if (force_close(t, NULL) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *transport_is_closing(Transport *t, PyObject *unused) {
    return PyBool_FromLong(t->closing || t->closed);
}

static PyObject *transport_get_extra_info(Transport *t, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"name", "default", NULL};
    PyObject *name, *fallback = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O", names, &name, &fallback)) return NULL;
    if (t->ssl != NULL && PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "ssl_object") == 0)
        return Py_NewRef((PyObject *)t);   /* getpeercert, version, cipher, selected_alpn_protocol: tls_methods */
    PyObject *value = t->extra ? PyDict_GetItemWithError(t->extra, name) : NULL;
    if (value == NULL && PyErr_Occurred()) return NULL;
    return Py_NewRef(value ? value : fallback);
}

static PyObject *transport_set_write_buffer_limits(Transport *t, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"high", "low", NULL};
    PyObject *high = Py_None, *low = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO", names, &high, &low)) return NULL;
    Py_ssize_t h = high == Py_None ? -1 : PyLong_AsSsize_t(high), l = low == Py_None ? -1 : PyLong_AsSsize_t(low);
    if (PyErr_Occurred()) return NULL;
    if (h < 0) h = l < 0 ? DEFAULT_HIGH : 4 * l;   /* asyncio's defaults */
    if (l < 0) l = h / 4;
    if (l > h) return PyErr_Format(PyExc_ValueError, "high (%zd) must be >= low (%zd) must be >= 0", h, l);
    t->high_water = (size_t)h;
    t->low_water = (size_t)l;
    if (after_write(t) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *transport_get_write_buffer_limits(Transport *t, PyObject *unused) {
    return Py_BuildValue("nn", (Py_ssize_t)t->low_water, (Py_ssize_t)t->high_water);
}

static PyObject *transport_get_write_buffer_size(Transport *t, PyObject *unused) {
    return PyLong_FromSize_t(buffered(t));
}

static PyObject *transport_get_protocol(Transport *t, PyObject *unused) {
    return Py_NewRef(t->protocol ? t->protocol : Py_None);
}

static PyObject *transport_set_protocol(Transport *t, PyObject *protocol) {
    Py_XSETREF(t->protocol, Py_NewRef(protocol));
    Py_RETURN_NONE;
}

/* The loop's call of connection_lost, once; then the transport lets go of the protocol (a cycle). */
static PyObject *transport_lost(Transport *t, PyObject *exc) {
    PyObject *protocol = t->protocol;
    t->protocol = NULL;
    if (protocol == NULL) Py_RETURN_NONE;
    PyObject *r = PyObject_CallMethodOneArg(protocol, s_connection_lost, exc);
    Py_DECREF(protocol);
    Py_CLEAR(t->waiter);
    return r;
}

/* Starts the transport: TCP is connected, so connection_made now; TLS begins its handshake. */
static PyObject *transport_start(Transport *t, PyObject *unused) {
    if (t->ssl == NULL && t->context == Py_None) {
        t->made = 1;
        if (call_protocol(t, s_connection_made, (PyObject *)t) < 0) return NULL;
        if (!t->closed && !t->closing && watch(t, 0, !t->reading_paused) < 0) return NULL;
        Py_RETURN_NONE;
    }
    if (tls_begin(t) < 0) return NULL;
    t->handshaking = 1;
    if (handshake_event(t) < 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- the type ---------------------------------------------------------------------------------------- */

static int transport_init(Transport *t, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"loop", "protocol", "sock", "extra", "context", "server_side", "waiter", NULL};
    PyObject *loop, *protocol, *sock, *extra, *context = Py_None, *waiter = Py_None;
    int server_side = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO!|OpO", names, &loop, &protocol, &sock, &PyDict_Type,
                                     &extra, &context, &server_side, &waiter))
        return -1;
    if (t->loop != NULL) { PyErr_SetString(PyExc_RuntimeError, "a native transport is made once"); return -1; }
    PyObject *fileno = PyObject_CallMethod(sock, "fileno", NULL);
    if (fileno == NULL) return -1;
    t->fd = (int)PyLong_AsLong(fileno);
    Py_DECREF(fileno);
    if (t->fd < 0) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "the socket is closed"); return -1; }
    t->loop = Py_NewRef(loop); t->protocol = Py_NewRef(protocol); t->sock = Py_NewRef(sock);
    t->extra = Py_NewRef(extra); t->context = Py_NewRef(context);
    t->waiter = waiter == Py_None ? NULL : Py_NewRef(waiter);
    t->server_side = server_side;
    t->high_water = DEFAULT_HIGH;
    t->low_water = DEFAULT_HIGH / 4;
    t->on_readable = PyObject_GetAttr((PyObject *)t, s_on_readable);
    t->on_writable = PyObject_GetAttrString((PyObject *)t, "_on_writable");
    return t->on_readable && t->on_writable ? 0 : -1;
}

static int transport_traverse(Transport *t, visitproc visit, void *arg) {
    Py_VISIT(t->loop); Py_VISIT(t->protocol); Py_VISIT(t->sock); Py_VISIT(t->extra); Py_VISIT(t->context);
    Py_VISIT(t->waiter); Py_VISIT(t->on_readable); Py_VISIT(t->on_writable);
    return 0;
}

static int transport_clear(Transport *t) {
    Py_CLEAR(t->protocol); Py_CLEAR(t->extra); Py_CLEAR(t->waiter);
    Py_CLEAR(t->on_readable); Py_CLEAR(t->on_writable);
    return 0;
}

static void transport_dealloc(Transport *t) {
    PyObject_GC_UnTrack(t);
    /* A transport dropped without close() is registered nowhere (the loop would hold it): its fd goes with
       its socket object, whose own dealloc closes it. Nothing here calls back into Python. */
    transport_clear(t);
    Py_CLEAR(t->loop); Py_CLEAR(t->sock); Py_CLEAR(t->context);
    if (t->ssl != NULL) SSL_free(t->ssl);
    PyMem_RawFree(t->out);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

#define M(name, fn, flags, doc) {name, (PyCFunction)(void (*)(void))fn, flags, doc}
static PyMethodDef core_methods[] = {
    M("write", transport_write, METH_O, "Sends data, or buffers what the socket does not take now."),
    M("writelines", transport_writelines, METH_O, "write() of the chunks joined."),
    M("write_eof", transport_write_eof, METH_NOARGS, "Half-closes (TCP) once the buffer is sent."),
    M("can_write_eof", transport_can_write_eof, METH_NOARGS, "True for TCP, False for TLS."),
    M("close", transport_close, METH_NOARGS, "Stops reading, sends what is buffered, then closes."),
    M("abort", transport_abort, METH_NOARGS, "Closes now, dropping what is buffered."),
    M("is_closing", transport_is_closing, METH_NOARGS, NULL),
    M("is_reading", transport_is_reading, METH_NOARGS, NULL),
    M("get_extra_info", transport_get_extra_info, METH_VARARGS | METH_KEYWORDS,
      "peername, sockname, socket; for TLS also ssl_object (this transport), sslcontext."),
    M("pause_reading", transport_pause_reading, METH_NOARGS, NULL),
    M("resume_reading", transport_resume_reading, METH_NOARGS, NULL),
    M("set_write_buffer_limits", transport_set_write_buffer_limits, METH_VARARGS | METH_KEYWORDS, NULL),
    M("get_write_buffer_limits", transport_get_write_buffer_limits, METH_NOARGS, NULL),
    M("get_write_buffer_size", transport_get_write_buffer_size, METH_NOARGS, NULL),
    M("get_protocol", transport_get_protocol, METH_NOARGS, NULL),
    M("set_protocol", transport_set_protocol, METH_O, NULL),
    M("_start", transport_start, METH_NOARGS, "connection_made (TCP) or the TLS handshake's first step."),
    M("_on_readable", transport_on_readable, METH_NOARGS, "The loop's reader callback."),
    M("_on_writable", transport_on_writable, METH_NOARGS, "The loop's writer callback."),
    M("_lost", transport_lost, METH_O, "connection_lost(exc), scheduled by the close."),
    {NULL}
};

static PyMethodDef all_methods[sizeof(core_methods) / sizeof(core_methods[0]) + 8];

static PyTypeObject TransportType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._native.Transport",
    .tp_basicsize = sizeof(Transport),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "An established TCP or TLS connection owned in C, driven by the loop (see shoal/native_io.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)transport_init,
    .tp_dealloc = (destructor)transport_dealloc,
    .tp_traverse = (traverseproc)transport_traverse,
    .tp_clear = (inquiry)transport_clear,
};

/* ---- the module -------------------------------------------------------------------------------------- */

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *factory, *context_type;
    if (!PyArg_ParseTuple(args, "OO!", &factory, &PyType_Type, &context_type)) return NULL;
    Py_XSETREF(error_factory, Py_NewRef(factory));
    Py_XSETREF(ssl_context_type, (PyTypeObject *)Py_NewRef(context_type));
    Py_RETURN_NONE;
}

static PyObject *check_context(PyObject *module, PyObject *context) {
    if (tls_context_of(context) == NULL) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"check_context", check_context, METH_O,
     "Raises unless the SSL_CTX inside this ssl.SSLContext can be used as it is (see _native_tls.c)."},
    {"configure", configure, METH_VARARGS,
     "configure(ssl_error_factory, _ssl._SSLContext): how to make ssl.SSLError, and the context type whose "
     "SSL_CTX the TLS transport uses."},
    {NULL}
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "shoal._native", "Native transports (see shoal/native_io.py).", -1, module_methods,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__native(void) {
    INTERN(s_add_reader, "add_reader"); INTERN(s_remove_reader, "remove_reader"); INTERN(s_add_writer, "add_writer");
    INTERN(s_remove_writer, "remove_writer"); INTERN(s_call_soon, "call_soon");
    INTERN(s_connection_made, "connection_made"); INTERN(s_data_received, "data_received");
    INTERN(s_eof_received, "eof_received"); INTERN(s_connection_lost, "connection_lost");
    INTERN(s_pause_writing, "pause_writing"); INTERN(s_resume_writing, "resume_writing"); INTERN(s_close, "close");
    INTERN(s_set_result, "set_result"); INTERN(s_set_exception, "set_exception"); INTERN(s_done, "done");
    INTERN(s_lost, "_lost"); INTERN(s_on_readable, "_on_readable");

    size_t n = 0;
    for (PyMethodDef *m = core_methods; m->ml_name; m++) all_methods[n++] = *m;
    for (PyMethodDef *m = tls_methods; m->ml_name; m++) all_methods[n++] = *m;
    TransportType.tp_methods = all_methods;
    if (PyType_Ready(&TransportType) < 0) return NULL;
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL) return NULL;
    static NativeApi api = {NATIVE_C_API_VERSION, &TransportType, api_write, api_is_closing, api_flush,
                             api_set_reader};
    if (PyModule_AddIntConstant(module, "API", NATIVE_API) < 0
        || PyModule_AddObject(module, "C_API", PyCapsule_New(&api, "shoal._native.C_API", NULL)) < 0
        || PyModule_AddObject(module, "OPENSSL_VERSION_NUMBER", PyLong_FromUnsignedLong(OpenSSL_version_num())) < 0
        || PyModule_AddObjectRef(module, "Transport", (PyObject *)&TransportType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
