/* The compiled lane of the HBONE relay: the plain case of one DATA frame, each way, without the interpreter.
 *
 * What the Python path does per message of an established tunnel, done here in one C call:
 * - app -> tunnel (`TcpSideBase.data_received`, for `shoal.hbone_relay.TcpSide`): what
 *   `TcpSide.data_received` -> `TunnelStream.write` -> `HboneConnection.send` -> `LeanH2.send_plain_data`
 *   -> `HboneSession.flush` do: count the bytes, take them off both send windows, frame them (9-byte DATA
 *   header, no END_STREAM) and hand the frame to the TLS transport;
 * - tunnel -> app (`SessionBase.data_received`, for `shoal.hbone_io.HboneSession`): what
 *   `DataSplitter._plain_data` -> `HboneConnection._translate` -> `HboneSession.handle` ->
 *   `HboneConnection.consumed` -> `LeanH2.acknowledge_received_data` do for a whole DATA frame: take it off
 *   both receive windows, write its payload to the app's side, and count it as processed.
 *
 * Everything here reads and writes the very objects the Python path uses (h2's connection, streams and
 * window managers, the core's tunnels, the driver's streams), so both paths leave the same state and
 * either can take the next message. Whatever is not the plain case (END_STREAM, padding, a frame cut
 * across reads, any other frame type, a window update due, a paused reader, a tunnel not attached yet, a
 * closing transport) is declined and goes, in order, to the Python path (`_data_received_python`), which
 * stays the one place where every tunnel rule lives.
 *
 * Transports: with the native ones in use (shoal._native, SHOAL_RELAY=native), the lane reads and writes
 * them in C through their capsule (NativeApi): a read reaches the lane as the transport's buffer (lane_read),
 * an app's read goes out as DATA frames of one TLS record each with no bytes object made, and a frame's
 * payload goes to a plain TcpSide's socket from the frame's own bytes.
 * On the loop's transports (SHOAL_RELAY=compiled) it calls their write()/writelines() as before.
 *
 * Why this much and no more: see ztunnel/PERFORMANCE.md ("Change 2").
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>
#include <structmember.h>
#include "_native_api.h"

#define LANE_API 4

enum { FRAME_HEADER = 9, TYPE_DATA = 0x0, TYPE_HEADERS = 0x1, TYPE_PUSH_PROMISE = 0x5, TYPE_CONTINUATION = 0x9,
       FLAG_END_HEADERS = 0x4, CLIENT_PREFACE = 24, JOIN_BELOW = 16384,
       RECORD_PAYLOAD = 16384 - FRAME_HEADER /* a DATA frame that fills one TLS record */ };

/* The native transports' C entry, when they are in use (use_native()): the lane then writes frames and
   payloads to them from its own buffers, with no bytes object and no Python-level call. The TcpSide class
   whose write() the lane may do itself (see write_to_app). */
static const NativeApi *native;
static PyTypeObject *native_tcp_side;
/* The app transports written to with `more` during one session_data_received: sent together at its end
   (one send for all the frames of a read bound for one app, not one per frame). Anything else written to
   them meanwhile goes through the same buffer, after these bytes, so the order holds. */
enum { CORK_MAX = 8 };
static PyObject *corked[CORK_MAX];
static int n_corked;

/* The state sets of the Python path, handed over once by configure() (read off h2's and the core's tables),
   each kept as a tuple of its members: see member(). */
static PyObject *connection_open, *stream_sends, *stream_receives, *stream_open, *tunnel_writable,
                *tunnel_receivable;

static PyObject *s_conn, *s_h2, *s_tunnels, *s_streams, *s_state, *s_state_machine, *s_held, *s_unsent,
                *s_peer, *s_write, *s_writelines, *s_is_closing, *s_transport, *s_session, *s_stream_id,
                *s_bytes_received, *s_bytes_sent, *s_receiving_paused, *s_consumed, *s_headers_received,
                *s_expected_content_length, *s_actual_content_length, *s_inbound_window_manager,
                *s_connection_window_manager, *s_current_window_size, *s_bytes_processed, *s_max_window_size,
                *s_max_inbound_frame_size, *s_max_outbound_frame_size, *s_outbound_flow_control_window,
                *s_data_to_send, *s_chunks, *s_draining, *s_flush, *s_python_data_received,
                *s_data_received;

/* shoal.hbone._Tunnel (a __slots__ class) and where its slots sit, handed over once by configure(): a
   tunnel of exactly that type has them read at their offset, without a lookup by name; anything else (or
   a slot never set) goes through PyObject_GetAttr, as Python would. */
static PyTypeObject *tunnel_type;
static Py_ssize_t at_state, at_held, at_unsent, at_receiving_paused;

/* ---- small helpers: each returns -1 with an exception set on error ---- */

/* tunnel.name as a new reference (NULL with an exception on error). */
static PyObject *tunnel_get(PyObject *tunnel, PyObject *name, Py_ssize_t offset) {
    if (Py_TYPE(tunnel) == tunnel_type) {
        PyObject *value = *(PyObject **)((char *)tunnel + offset);
        if (value != NULL) return Py_NewRef(value);
    }
    return PyObject_GetAttr(tunnel, name);
}

/* 1 if `state` is one of `states` (a tuple of enum members), 0 if not. Members are singletons, so they are
   compared by identity first: h2's ConnectionState hashes in Python code (Enum.__hash__), which a set lookup
   would run on every frame. Anything else gets ==, as a set would. */
static int member(PyObject *states, PyObject *state) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(states); i++)
        if (PyTuple_GET_ITEM(states, i) == state) return 1;
    return PySequence_Contains(states, state);
}

/* 1 if tunnel.state is in `states`, 0 if not. */
static int tunnel_state_in(PyObject *tunnel, PyObject *states) {
    PyObject *state = tunnel_get(tunnel, s_state, at_state);
    if (state == NULL) return -1;
    int rc = member(states, state);
    Py_DECREF(state);
    return rc;
}

static int get_ssize(PyObject *obj, PyObject *name, Py_ssize_t *out) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) return -1;
    *out = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int add_ssize(PyObject *obj, PyObject *name, Py_ssize_t delta) {
    Py_ssize_t now;
    if (get_ssize(obj, name, &now) < 0) return -1;
    PyObject *value = PyLong_FromSsize_t(now + delta);
    if (value == NULL) return -1;
    int rc = PyObject_SetAttr(obj, name, value);
    Py_DECREF(value);
    return rc;
}

/* 1 if obj.name (a state) is in `states`, 0 if not. */
static int state_in(PyObject *obj, PyObject *name, PyObject *states) {
    PyObject *state = PyObject_GetAttr(obj, name);
    if (state == NULL) return -1;
    int rc = member(states, state);
    Py_DECREF(state);
    return rc;
}

/* 1 if the state machine of `obj` (h2 connection or stream) is in `states`. */
static int machine_in(PyObject *obj, PyObject *states) {
    PyObject *machine = PyObject_GetAttr(obj, s_state_machine);
    if (machine == NULL) return -1;
    int rc = state_in(machine, s_state, states);
    Py_DECREF(machine);
    return rc;
}

static Py_ssize_t sized_len(PyObject *obj, PyObject *name) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) return -1;
    Py_ssize_t size = PyObject_Size(value);
    Py_DECREF(value);
    return size;
}

static int is_closing(PyObject *transport) {
    if (native != NULL && Py_TYPE(transport) == native->transport_type) return native->is_closing(transport);
    PyObject *closing = PyObject_CallMethodNoArgs(transport, s_is_closing);
    if (closing == NULL) return -1;
    int rc = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    return rc;
}

/* peer.write(payload) for the tunnel -> app direction. When the peer is a plain TcpSide on a native
   transport, what TcpSide.write does (drop when closing, count bytes_sent, write) is done here from the
   frame's own bytes; else the peer's write() is called with a bytes object. 0 ok, -1 error. */
static int write_to_app(PyObject *peer, const char *payload, Py_ssize_t length);
static int uncork(void);

static int configured(void) {
    if (connection_open == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "shoal._relay.configure() was not called; import shoal.relay_lane first");
        return 0;
    }
    return 1;
}

/* ==== tunnel -> app ==================================================================================== */

typedef struct {
    PyObject_HEAD
    int enabled;                    /* the lane is on for this session (compiled relay, lean HTTP/2) */
    Py_ssize_t preface_left;        /* server side: the client preface, before any frame */
    Py_ssize_t python_frame_left;   /* what is left of a frame handed to the Python path */
    unsigned char header[FRAME_HEADER];
    int header_len;                 /* a frame header cut across reads (handed to the Python path too) */
    int in_header_block;            /* HEADERS or PUSH_PROMISE seen without END_HEADERS yet */
    double last_active;             /* HboneSession.last_active (time.monotonic()), kept here: see session_members */
    /* Bound once by _enable_lane, the objects HboneSession.__init__ made and nothing replaces for the
       session's life (the same objects the Python path uses, so no copy of state): the core (self.conn),
       its h2 connection, h2's state machine and connection receive window, and the three stream tables
       (core._tunnels, h2.streams, self.streams). Read by pointer, not looked up by name per message;
       released on dealloc and by the cycle collector (tp_clear), after which the lane declines. */
    PyObject *core, *h2, *h2_machine, *connection_window, *tunnels, *h2_streams, *streams;
} SessionBase;

static int session_traverse(PyObject *self, visitproc visit, void *arg) {
    SessionBase *lane = (SessionBase *)self;
    Py_VISIT(lane->core); Py_VISIT(lane->h2); Py_VISIT(lane->h2_machine); Py_VISIT(lane->connection_window);
    Py_VISIT(lane->tunnels); Py_VISIT(lane->h2_streams); Py_VISIT(lane->streams);
    return 0;
}

static int session_clear(PyObject *self) {
    SessionBase *lane = (SessionBase *)self;
    lane->enabled = 0;   /* nothing bound: every read takes the Python path */
    Py_CLEAR(lane->core); Py_CLEAR(lane->h2); Py_CLEAR(lane->h2_machine); Py_CLEAR(lane->connection_window);
    Py_CLEAR(lane->tunnels); Py_CLEAR(lane->h2_streams); Py_CLEAR(lane->streams);
    return 0;
}

static void session_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    session_clear(self);
    Py_TYPE(self)->tp_free(self);
}

/* The dict owner.name, as a new reference; a TypeError naming it when it is not a dict. */
static PyObject *bind_dict(PyObject *owner, PyObject *name) {
    PyObject *value = PyObject_GetAttr(owner, name);
    if (value != NULL && !PyDict_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "the lane binds %U as a dict, got %R", name, Py_TYPE(value));
        Py_CLEAR(value);
    }
    return value;
}

/* Hands bytes [start, end) of the read `buf` (`data`'s bytes, or a native transport's buffer when `data` is
   NULL) to the Python path; 1 go on, 0 stop (the session is closing), -1 error. */
static int to_python(PyObject *self, PyObject *data, const char *buf, Py_ssize_t start, Py_ssize_t end) {
    if (start >= end) return 1;
    PyObject *chunk;
    if (data != NULL && start == 0 && end == PyBytes_GET_SIZE(data)) {
        chunk = Py_NewRef(data);
    } else {
        chunk = PyBytes_FromStringAndSize(buf + start, end - start);
        if (chunk == NULL) return -1;
    }
    PyObject *result = PyObject_CallMethodOneArg(self, s_python_data_received, chunk);
    Py_DECREF(chunk);
    if (result == NULL) return -1;
    Py_DECREF(result);
    /* A peer that broke the protocol closed the transport: nothing after it is carried out (as in Python). */
    PyObject *transport = PyObject_GetAttr(self, s_transport);
    if (transport == NULL) return -1;
    int closing = transport == Py_None ? 1 : is_closing(transport);
    Py_DECREF(transport);
    return closing < 0 ? -1 : !closing;
}

/* Would h2's WindowManager only count `size` processed bytes (LeanH2._only_counts)? */
static int only_counts(PyObject *window, Py_ssize_t size) {
    Py_ssize_t current, processed, largest;
    if (get_ssize(window, s_current_window_size, &current) < 0 || get_ssize(window, s_bytes_processed, &processed) < 0
        || get_ssize(window, s_max_window_size, &largest) < 0)
        return -1;
    return current != 0 && processed + size < largest / 2;
}

/* One whole plain DATA frame: 1 carried, 0 declined (nothing changed), -1 error. */
static int receive_plain(PyObject *self, PyObject *stream_key, const char *payload, Py_ssize_t length,
                         int *flush) {
    int result = 0, rc;
    SessionBase *lane = (SessionBase *)self;
    PyObject *held = NULL, *peer = NULL, *h2_stream = NULL, *stream_window = NULL, *expected = NULL,
             *machine = NULL, *headers = NULL, *call = NULL;
    PyObject *core = lane->core, *h2 = lane->h2, *connection_window = lane->connection_window;
    Py_ssize_t limit, room;

    PyObject *tunnel = PyDict_GetItemWithError(lane->tunnels, stream_key);
    if (tunnel == NULL) { if (PyErr_Occurred()) goto error; goto done; }
    Py_INCREF(tunnel);
    held = tunnel_get(tunnel, s_held, at_held);
    if (held == NULL) { Py_DECREF(tunnel); goto error; }
    rc = held == Py_None ? tunnel_state_in(tunnel, tunnel_receivable) : 0;   /* attached, and may receive */
    Py_DECREF(tunnel);
    if (rc <= 0) { if (rc < 0) goto error; goto done; }

    PyObject *stream = PyDict_GetItemWithError(lane->streams, stream_key);  /* the driver's TunnelStream */
    if (stream == NULL) { if (PyErr_Occurred()) goto error; goto done; }
    peer = PyObject_GetAttr(stream, s_peer);
    if (peer == NULL) goto error;
    if (peer == Py_None) goto done;

    h2_stream = Py_XNewRef(PyDict_GetItemWithError(lane->h2_streams, stream_key));   /* held across calls */
    if (h2_stream == NULL) { if (PyErr_Occurred()) goto error; goto done; }
    if ((rc = state_in(lane->h2_machine, s_state, connection_open)) <= 0
        || (rc = machine_in(h2_stream, stream_receives)) <= 0) {
        if (rc < 0) goto error;
        goto done;
    }
    machine = PyObject_GetAttr(h2_stream, s_state_machine);
    if (machine == NULL) goto error;
    headers = PyObject_GetAttr(machine, s_headers_received);
    if (headers == NULL) goto error;
    if ((rc = PyObject_IsTrue(headers)) <= 0) { if (rc < 0) goto error; goto done; }
    expected = PyObject_GetAttr(h2_stream, s_expected_content_length);
    if (expected == NULL) goto error;
    if (expected != Py_None) goto done;
    if (get_ssize(h2, s_max_inbound_frame_size, &limit) < 0) goto error;
    if (length > limit) goto done;
    stream_window = PyObject_GetAttr(h2_stream, s_inbound_window_manager);
    if (stream_window == NULL) goto error;
    if (get_ssize(connection_window, s_current_window_size, &room) < 0) goto error;
    if (length > room) goto done;
    if (get_ssize(stream_window, s_current_window_size, &room) < 0) goto error;
    if (length > room) goto done;

    /* The plain case: h2 would only shrink the windows and count the bytes (DataSplitter._plain_data). */
    if (add_ssize(connection_window, s_current_window_size, -length) < 0
        || add_ssize(stream_window, s_current_window_size, -length) < 0
        || add_ssize(h2_stream, s_actual_content_length, length) < 0)
        goto error;
    result = 1;
    /* The driver (HboneSession.handle): the bytes go to the app's side, then are consumed. */
    if (add_ssize(stream, s_bytes_received, length) < 0) goto error;
    if (write_to_app(peer, payload, length) < 0) goto error;

    /* HboneConnection.consumed, then LeanH2.acknowledge_received_data when it would only count. The peer's
       write may have paused the app's side (credit withheld then), or ended the stream: re-read both. */
    tunnel = PyDict_GetItemWithError(lane->tunnels, stream_key);
    if (tunnel == NULL && PyErr_Occurred()) goto error;
    int plain = 0;
    if (tunnel != NULL) {
        PyObject *paused = tunnel_get(tunnel, s_receiving_paused, at_receiving_paused);
        if (paused == NULL) goto error;
        rc = PyObject_IsTrue(paused);
        Py_DECREF(paused);
        if (rc < 0) goto error;
        plain = !rc;
    }
    if (plain) {
        Py_CLEAR(h2_stream);
        h2_stream = Py_XNewRef(PyDict_GetItemWithError(lane->h2_streams, stream_key));
        if (h2_stream == NULL && PyErr_Occurred()) goto error;
        plain = 0;
        if (h2_stream != NULL) {
            Py_CLEAR(stream_window);
            stream_window = PyObject_GetAttr(h2_stream, s_inbound_window_manager);
            if (stream_window == NULL) goto error;
            int open = machine_in(h2_stream, stream_open);
            int a = open > 0 ? only_counts(connection_window, length) : open;
            int b = a > 0 ? only_counts(stream_window, length) : a;
            if (b < 0) goto error;
            plain = b;
        }
    }
    if (plain) {
        if (add_ssize(connection_window, s_bytes_processed, length) < 0
            || add_ssize(stream_window, s_bytes_processed, length) < 0)
            goto error;
    } else {
        call = PyObject_CallMethod(core, "consumed", "On", stream_key, length);
        if (call == NULL) goto error;
        *flush = 1;   /* a WINDOW_UPDATE may be queued */
    }
    goto done;
error:
    result = -1;
done:
    Py_XDECREF(held); Py_XDECREF(peer); Py_XDECREF(stream_window); Py_XDECREF(h2_stream);
    Py_XDECREF(expected); Py_XDECREF(machine); Py_XDECREF(headers); Py_XDECREF(call);
    return result;
}

static void note_header(SessionBase *lane, const unsigned char *header) {
    unsigned char type = header[3], flags = header[4];
    if (type == TYPE_HEADERS || type == TYPE_PUSH_PROMISE || type == TYPE_CONTINUATION)
        lane->in_header_block = !(flags & FLAG_END_HEADERS);
}

/* One read of the TLS connection: `data` (bytes), or with `data` NULL a native transport's buffer `buf`, which
   is only lent for the call. 0, or -1 with an exception. */
static int session_receive(PyObject *self, PyObject *data, const char *buf, Py_ssize_t size) {
    SessionBase *lane = (SessionBase *)self;
    Py_ssize_t pos = 0, python_from = 0;
    int carried = 0, flush = 0, rc;
    while (pos < size) {
        if (lane->preface_left) {
            Py_ssize_t take = size - pos < lane->preface_left ? size - pos : lane->preface_left;
            lane->preface_left -= take;
            pos += take;
            continue;
        }
        if (lane->python_frame_left) {
            Py_ssize_t take = size - pos < lane->python_frame_left ? size - pos : lane->python_frame_left;
            lane->python_frame_left -= take;
            pos += take;
            continue;
        }
        if (lane->header_len || size - pos < FRAME_HEADER) {   /* a header cut across reads: Python's frame */
            while (lane->header_len < FRAME_HEADER && pos < size)
                lane->header[lane->header_len++] = (unsigned char)buf[pos++];
            if (lane->header_len == FRAME_HEADER) {
                note_header(lane, lane->header);
                lane->python_frame_left = (lane->header[0] << 16) | (lane->header[1] << 8) | lane->header[2];
                lane->header_len = 0;
            }
            continue;
        }
        const unsigned char *header = (const unsigned char *)buf + pos;
        Py_ssize_t length = (header[0] << 16) | (header[1] << 8) | header[2];
        int block = lane->in_header_block;
        note_header(lane, header);
        if (header[3] == TYPE_DATA && header[4] == 0 && length > 0 && !block && size - pos >= FRAME_HEADER + length) {
            if ((rc = to_python(self, data, buf, python_from, pos)) <= 0) goto stop;
            python_from = pos;
            unsigned long id = (((unsigned long)header[5] << 24) | (header[6] << 16) | (header[7] << 8) | header[8])
                               & 0x7FFFFFFFUL;
            PyObject *key = PyLong_FromUnsignedLong(id);
            if (key == NULL) { rc = -1; goto stop; }
            rc = receive_plain(self, key, buf + pos + FRAME_HEADER, length, &flush);
            Py_DECREF(key);
            if (rc < 0) goto stop;
            if (rc) {
                carried = 1;
                pos += FRAME_HEADER + length;
                python_from = pos;
                continue;
            }
        }
        lane->python_frame_left = length;   /* declined: the whole frame is Python's */
        pos += FRAME_HEADER;
    }
    rc = to_python(self, data, buf, python_from, size);
stop:
    if (native != NULL && n_corked && uncork() < 0 && rc >= 0) rc = -1;
    if (rc >= 0 && carried) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);     /* time.monotonic()'s clock, as HboneSession.last_active */
        lane->last_active = (double)now.tv_sec + now.tv_nsec * 1e-9;
    }
    if (rc >= 0 && flush) {
        PyObject *result = PyObject_CallMethodNoArgs(self, s_flush);
        if (result == NULL) rc = -1;
        Py_XDECREF(result);
    }
    return rc < 0 ? -1 : 0;
}

/* The bytes of a lent buffer, for the Python path. */
static PyObject *python_call(PyObject *self, const char *buf, Py_ssize_t size) {
    PyObject *data = PyBytes_FromStringAndSize(buf, size);
    if (data == NULL) return NULL;
    PyObject *result = PyObject_CallMethodOneArg(self, s_python_data_received, data);
    Py_DECREF(data);
    return result;
}

static PyObject *session_data_received(PyObject *self, PyObject *data) {
    SessionBase *lane = (SessionBase *)self;
    if (!lane->enabled || !PyBytes_Check(data))
        return PyObject_CallMethodOneArg(self, s_python_data_received, data);
    if (!configured()) return NULL;
    Py_INCREF(data);    /* held across calls into Python */
    int rc = session_receive(self, data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    Py_DECREF(data);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *session_enable_lane(PyObject *self, PyObject *args) {
    SessionBase *lane = (SessionBase *)self;
    int client;
    if (!PyArg_ParseTuple(args, "p", &client)) return NULL;
    /* Once, before any byte: a running receive holds the bound objects as borrowed references. */
    if (lane->enabled) {
        PyErr_SetString(PyExc_RuntimeError, "the lane of a session is enabled once, before its first byte");
        return NULL;
    }
    if (!configured()) return NULL;
    PyObject *core = PyObject_GetAttr(self, s_conn);
    if (core == NULL) return NULL;
    PyObject *h2 = PyObject_GetAttr(core, s_h2);
    PyObject *machine = h2 ? PyObject_GetAttr(h2, s_state_machine) : NULL;
    PyObject *window = machine ? PyObject_GetAttr(h2, s_connection_window_manager) : NULL;
    PyObject *tunnels = window ? bind_dict(core, s_tunnels) : NULL;
    PyObject *h2_streams = tunnels ? bind_dict(h2, s_streams) : NULL;
    PyObject *streams = h2_streams ? bind_dict(self, s_streams) : NULL;
    if (streams == NULL) {
        Py_DECREF(core); Py_XDECREF(h2); Py_XDECREF(machine); Py_XDECREF(window); Py_XDECREF(tunnels);
        Py_XDECREF(h2_streams);
        return NULL;
    }
    Py_XSETREF(lane->core, core); Py_XSETREF(lane->h2, h2); Py_XSETREF(lane->h2_machine, machine);
    Py_XSETREF(lane->connection_window, window); Py_XSETREF(lane->tunnels, tunnels);
    Py_XSETREF(lane->h2_streams, h2_streams); Py_XSETREF(lane->streams, streams);
    lane->enabled = 1;
    lane->preface_left = client ? 0 : CLIENT_PREFACE;
    lane->python_frame_left = 0;
    lane->header_len = 0;
    lane->in_header_block = 0;
    Py_RETURN_NONE;
}

static PyObject *session_lane_enabled(PyObject *self, void *closure) {
    return PyBool_FromLong(((SessionBase *)self)->enabled);
}

static PyMethodDef session_methods[] = {
    {"data_received", session_data_received, METH_O,
     "Carries plain DATA frames of attached tunnels to their app; all else goes to _data_received_python."},
    {"_enable_lane", session_enable_lane, METH_VARARGS,
     "Turns the lane on for a new session (before any byte arrives; after self.conn and self.streams are "
     "made, which it binds); the argument: is it the client side."},
    {NULL}
};

/* last_active as a C double: the lane stamps each read it carries with no float object and no dict write;
   Python reads and sets it as the attribute it was (a float). */
static PyMemberDef session_members[] = {
    {"last_active", T_DOUBLE, offsetof(SessionBase, last_active), 0,
     "time.monotonic() of the session's last carried read (HboneSession sets it too)."},
    {NULL}
};

static PyGetSetDef session_getset[] = {
    {"lane_enabled", session_lane_enabled, NULL, "Is the compiled lane on for this session?", NULL},
    {NULL}
};

static PyTypeObject SessionBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._relay.SessionBase",
    .tp_basicsize = sizeof(SessionBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = session_traverse,
    .tp_clear = session_clear,
    .tp_dealloc = session_dealloc,
    .tp_free = PyObject_GC_Del,
    .tp_doc = "The compiled receive lane of an HBONE session (shoal.hbone_io.HboneSession).",
    .tp_methods = session_methods,
    .tp_getset = session_getset,
    .tp_members = session_members,
    .tp_new = PyType_GenericNew,
};

/* ==== app -> tunnel ==================================================================================== */

static PyTypeObject StreamBaseType;

/* One read of the app as one plain DATA frame: 1 sent, 0 declined (nothing changed), -1 error. `self` is
   the app's TcpSide, whose bytes_received counts the read; NULL for a caller that counted it already. The
   read is `data` (bytes), or with `data` NULL a native transport's buffer, lent for the call. */
static int send_plain(PyObject *self, PyObject *stream, PyObject *data, const char *payload, Py_ssize_t length) {
    int result = 0, rc;
    Py_ssize_t limit;
    PyObject *session = NULL, *draining = NULL, *transport = NULL, *key = NULL, *frame = NULL, *call = NULL;

    if (length == 0) return 0;
    session = PyObject_GetAttr(stream, s_session);
    if (session == NULL) goto error;
    if (!PyObject_TypeCheck(session, &SessionBaseType) || !((SessionBase *)session)->enabled) goto done;
    draining = PyObject_GetAttr(session, s_draining);   /* a drain closes the session after the last stream */
    if (draining == NULL) goto error;
    if (draining != Py_False) goto done;
    transport = PyObject_GetAttr(session, s_transport);
    if (transport == NULL) goto error;
    if (transport == Py_None) goto done;
    if ((rc = is_closing(transport)) != 0) { if (rc < 0) goto error; goto done; }
    SessionBase *lane = (SessionBase *)session;
    PyObject *h2 = lane->h2;
    key = PyObject_GetAttr(stream, s_stream_id);
    if (key == NULL) goto error;
    PyObject *tunnel = PyDict_GetItemWithError(lane->tunnels, key);
    if (tunnel == NULL) { if (PyErr_Occurred()) goto error; goto done; }
    if ((rc = tunnel_state_in(tunnel, tunnel_writable)) <= 0) { if (rc < 0) goto error; goto done; }
    PyObject *unsent = tunnel_get(tunnel, s_unsent, at_unsent);
    if (unsent == NULL) goto error;
    Py_ssize_t waiting = PyObject_Size(unsent);
    Py_DECREF(unsent);
    if (waiting != 0) { if (waiting < 0) goto error; goto done; }

    PyObject *h2_stream = PyDict_GetItemWithError(lane->h2_streams, key);
    if (h2_stream == NULL) { if (PyErr_Occurred()) goto error; goto done; }
    if (get_ssize(h2, s_max_outbound_frame_size, &limit) < 0) goto error;
    if (length > limit) goto done;
    if (get_ssize(h2, s_outbound_flow_control_window, &limit) < 0) goto error;
    if (length > limit) goto done;
    if (get_ssize(h2_stream, s_outbound_flow_control_window, &limit) < 0) goto error;
    if (length > limit) goto done;
    if ((rc = state_in(lane->h2_machine, s_state, connection_open)) <= 0
        || (rc = machine_in(h2_stream, stream_sends)) <= 0) {
        if (rc < 0) goto error;
        goto done;
    }
    /* Frames h2 queued before this one go first: then this is the Python path's to order. */
    Py_ssize_t queued = sized_len(h2, s_data_to_send);
    if (queued == 0) queued = sized_len(h2, s_chunks);
    if (queued != 0) { if (queued < 0) goto error; goto done; }

    /* The plain case (LeanH2.send_plain_data): both send windows go down, one DATA frame goes out. */
    if (self != NULL && add_ssize(self, s_bytes_received, length) < 0) goto error;
    if (add_ssize(h2, s_outbound_flow_control_window, -length) < 0
        || add_ssize(h2_stream, s_outbound_flow_control_window, -length) < 0)
        goto error;
    result = 1;
    if (add_ssize(stream, s_bytes_sent, length) < 0) goto error;
    unsigned long id = PyLong_AsUnsignedLong(key);
    if (id == (unsigned long)-1 && PyErr_Occurred()) goto error;
    unsigned char header[FRAME_HEADER] = {
        (unsigned char)(length >> 16), (unsigned char)(length >> 8), (unsigned char)length, TYPE_DATA, 0,
        (unsigned char)(id >> 24), (unsigned char)(id >> 16), (unsigned char)(id >> 8), (unsigned char)id};
    if (native != NULL && Py_TYPE(transport) == native->transport_type) {
        /* Straight from the app's read, as frames of one TLS record each (header and payload 16 KiB), all
           sent together: a large read makes several frames, and the peer's reads then cut few of them (a
           cut frame takes the Python path there). The windows and the frame size were checked for the
           whole read above; smaller frames change neither. */
        for (Py_ssize_t at = 0; at < length;) {
            Py_ssize_t size = length - at < RECORD_PAYLOAD ? length - at : RECORD_PAYLOAD;
            header[0] = (unsigned char)(size >> 16); header[1] = (unsigned char)(size >> 8);
            header[2] = (unsigned char)size;
            at += size;
            if (native->write(transport, (const char *)header, FRAME_HEADER, payload + at - size, size,
                              at < length) < 0)
                goto error;
        }
        goto done;
    }
    if (length <= JOIN_BELOW) {   /* as hbone_lean._queue_data: one chunk, so one TLS record */
        frame = PyBytes_FromStringAndSize(NULL, FRAME_HEADER + length);
        if (frame == NULL) goto error;
        memcpy(PyBytes_AS_STRING(frame), header, FRAME_HEADER);
        memcpy(PyBytes_AS_STRING(frame) + FRAME_HEADER, payload, length);
        call = PyObject_CallMethodOneArg(transport, s_write, frame);
    } else {
        PyObject *head = PyBytes_FromStringAndSize((const char *)header, FRAME_HEADER);
        if (head == NULL) goto error;
        frame = PyList_New(2);
        if (frame == NULL) { Py_DECREF(head); goto error; }
        PyList_SET_ITEM(frame, 0, head);
        PyObject *body = data != NULL ? Py_NewRef(data) : PyBytes_FromStringAndSize(payload, length);
        if (body == NULL) goto error;
        PyList_SET_ITEM(frame, 1, body);
        call = PyObject_CallMethodOneArg(transport, s_writelines, frame);
    }
    if (call == NULL) goto error;
    goto done;
error:
    result = -1;
done:
    Py_XDECREF(session); Py_XDECREF(draining); Py_XDECREF(transport); Py_XDECREF(key); Py_XDECREF(frame);
    Py_XDECREF(call);
    return result;
}

/* TunnelStream.write(data) when it is the plain case (a message of the waypoint's Channel.send, say):
   True sent (bytes_sent counted, as write() counts it), False declined with nothing changed. */
static PyObject *stream_write_plain(PyObject *self, PyObject *data) {
    if (!configured()) return NULL;
    if (!PyBytes_CheckExact(data)) Py_RETURN_FALSE;
    Py_INCREF(data);
    int rc = send_plain(NULL, self, data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    Py_DECREF(data);
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

static PyMethodDef stream_methods[] = {
    {"_write_plain", stream_write_plain, METH_O,
     "Sends bytes as one plain DATA frame of this tunnel and returns True, or returns False having changed "
     "nothing (then write() takes them: the Python path)."},
    {NULL}
};

static PyTypeObject StreamBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._relay.StreamBase",
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A tunnel stream (shoal.hbone_io.TunnelStream) the send lane may write to.",
    .tp_methods = stream_methods,
    .tp_new = PyType_GenericNew,
};

/* One read of the app: `data` (bytes), or with `data` NULL a native transport's buffer, lent for the call.
   1 sent by the lane, 0 declined (the Python path's), -1 error. */
static int side_send(PyObject *self, PyObject *data, const char *buf, Py_ssize_t size) {
    PyObject *peer = PyObject_GetAttr(self, s_peer);
    if (peer == NULL) return -1;
    int rc = PyObject_TypeCheck(peer, &StreamBaseType) ? send_plain(self, peer, data, buf, size) : 0;
    Py_DECREF(peer);
    return rc;
}

static PyObject *side_data_received(PyObject *self, PyObject *data) {
    if (!configured()) return NULL;
    int rc = 0;
    if (PyBytes_CheckExact(data)) {
        Py_INCREF(data);
        rc = side_send(self, data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
        Py_DECREF(data);
    }
    if (rc < 0) return NULL;
    if (rc) Py_RETURN_NONE;
    return PyObject_CallMethodOneArg(self, s_python_data_received, data);
}

/* The native transports' reader (NativeApi.set_reader): a read for a protocol whose data_received is the
   lane's (SessionBase's or TcpSideBase's, not overridden) is carried from the transport's buffer, with no
   bytes object and no Python-level call; the Python path gets bytes made from it. 1 taken, 0 not a lane
   protocol (the transport calls its data_received), -1 error. */
static PyObject *session_method, *side_method;   /* SessionBase.data_received, TcpSideBase.data_received */

static PyTypeObject TcpSideBaseType;   /* defined below */

static int lane_read(PyObject *protocol, const char *buf, Py_ssize_t size) {
    PyObject *method = _PyType_Lookup(Py_TYPE(protocol), s_data_received);
    PyObject *result;
    if (method == NULL || (method != session_method && method != side_method)) return 0;
    /* The method alone does not make the object ours (a class may borrow it without inheriting). */
    if (!PyObject_TypeCheck(protocol, method == session_method ? &SessionBaseType : &TcpSideBaseType)) return 0;
    if (!configured()) return -1;
    if (method == session_method) {
        if (((SessionBase *)protocol)->enabled) return session_receive(protocol, NULL, buf, size) < 0 ? -1 : 1;
        result = python_call(protocol, buf, size);
    } else {
        int rc = side_send(protocol, NULL, buf, size);
        if (rc != 0) return rc;
        result = python_call(protocol, buf, size);
    }
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 1;
}

static PyMethodDef side_methods[] = {
    {"data_received", side_data_received, METH_O,
     "Sends a read of the app as one plain DATA frame of its tunnel; all else goes to _data_received_python."},
    {NULL}
};

static PyTypeObject TcpSideBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._relay.TcpSideBase",
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The compiled send lane of an app's TCP side (shoal.hbone_relay.TcpSide).",
    .tp_methods = side_methods,
    .tp_new = PyType_GenericNew,
};

/* Sends what the corked transports hold: 0, or -1 with an exception (the others are still sent). */
static int uncork(void) {
    PyObject *held[CORK_MAX];
    int n = n_corked, rc = 0;
    memcpy(held, corked, n * sizeof(PyObject *));
    n_corked = 0;
    for (int i = 0; i < n; i++) {
        if (native->flush(held[i]) < 0) {
            if (rc == 0) rc = -1; else PyErr_WriteUnraisable(held[i]);
        }
        Py_DECREF(held[i]);
    }
    return rc;
}

/* Whether a write to `transport` may wait for uncork(): it is (or can now be) in the corked set. */
static int cork(PyObject *transport) {
    for (int i = 0; i < n_corked; i++)
        if (corked[i] == transport) return 1;
    if (n_corked == CORK_MAX) return 0;
    corked[n_corked++] = Py_NewRef(transport);
    return 1;
}

static int write_to_app(PyObject *peer, const char *payload, Py_ssize_t length) {
    if (native != NULL && Py_TYPE(peer) == native_tcp_side) {
        PyObject *transport = PyObject_GetAttr(peer, s_transport);
        if (transport == NULL) return -1;
        int rc = 0;
        if (Py_TYPE(transport) == native->transport_type) {
            if (!native->is_closing(transport)) {   /* TcpSide.write: late bytes for a closing side are dropped */
                rc = add_ssize(peer, s_bytes_sent, length);
                if (rc == 0 && native->write(transport, payload, length, NULL, 0, cork(transport)) < 0) rc = -1;
            }
            Py_DECREF(transport);
            return rc;
        }
        Py_DECREF(transport);
    }
    PyObject *bytes = PyBytes_FromStringAndSize(payload, length);
    if (bytes == NULL) return -1;
    PyObject *call = PyObject_CallMethodOneArg(peer, s_write, bytes);
    Py_DECREF(bytes);
    if (call == NULL) return -1;
    Py_DECREF(call);
    return 0;
}

/* ==== the module ======================================================================================= */

static PyObject *use_native(PyObject *module, PyObject *args) {
    PyObject *capsule, *tcp_side;
    if (!PyArg_ParseTuple(args, "OO!", &capsule, &PyType_Type, &tcp_side)) return NULL;
    const NativeApi *api = PyCapsule_GetPointer(capsule, "shoal._native.C_API");
    if (api == NULL) return NULL;
    if (api->version != NATIVE_C_API_VERSION)
        return PyErr_Format(PyExc_RuntimeError, "shoal._native's C API is version %d, the lane speaks %d; rebuild "
                            "both with scripts/setup.sh", api->version, NATIVE_C_API_VERSION);
    if (!PyType_IsSubtype((PyTypeObject *)tcp_side, &TcpSideBaseType))
        return PyErr_Format(PyExc_TypeError, "%R is not a TcpSideBase", tcp_side);
    native = api;
    Py_XSETREF(native_tcp_side, (PyTypeObject *)Py_NewRef(tcp_side));
    native->set_reader(lane_read);
    Py_RETURN_NONE;
}

/* Where the slot `name` of `type` sits, or -1 with an exception saying what is wrong. */
static Py_ssize_t slot_offset(PyTypeObject *type, PyObject *name) {
    PyObject *descr = PyObject_GetAttr((PyObject *)type, name);
    if (descr == NULL) PyErr_Clear();
    Py_ssize_t offset = -1;
    if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type) && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX
        && !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY))
        offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    else
        PyErr_Format(PyExc_TypeError, "%s.%U is not a __slots__ slot; the lane reads it as one", type->tp_name, name);
    Py_XDECREF(descr);
    return offset;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *sets[6];
    PyTypeObject *tunnel;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!", &PyFrozenSet_Type, &sets[0], &PyFrozenSet_Type, &sets[1],
                          &PyFrozenSet_Type, &sets[2], &PyFrozenSet_Type, &sets[3], &PyFrozenSet_Type, &sets[4],
                          &PyFrozenSet_Type, &sets[5], &PyType_Type, &tunnel))
        return NULL;
    Py_ssize_t state, held, unsent, paused;
    if ((state = slot_offset(tunnel, s_state)) < 0 || (held = slot_offset(tunnel, s_held)) < 0
        || (unsent = slot_offset(tunnel, s_unsent)) < 0 || (paused = slot_offset(tunnel, s_receiving_paused)) < 0)
        return NULL;
    Py_XSETREF(tunnel_type, (PyTypeObject *)Py_NewRef(tunnel));
    at_state = state; at_held = held; at_unsent = unsent; at_receiving_paused = paused;
    PyObject **slots[6] = {&connection_open, &stream_sends, &stream_receives, &stream_open, &tunnel_writable,
                           &tunnel_receivable};
    for (int i = 0; i < 6; i++) {
        PyObject *members = PySequence_Tuple(sets[i]);
        if (members == NULL) return NULL;
        Py_XSETREF(*slots[i], members);
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"use_native", use_native, METH_VARARGS,
     "use_native(shoal._native.C_API, TcpSide): write to native transports in C; TcpSide.write is done in C "
     "for that exact class."},
    {"configure", configure, METH_VARARGS,
     "configure(connection_open, stream_sends, stream_receives, stream_open, tunnel_writable, "
     "tunnel_receivable, tunnel_class): the state sets of h2 and shoal.hbone the lane checks, as frozensets, "
     "and shoal.hbone._Tunnel, whose slots the lane reads."},
    {NULL}
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT, "shoal._relay",
    "The compiled lane of the HBONE relay (see shoal/relay_lane.py).", -1, module_methods,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__relay(void) {
    INTERN(s_conn, "conn"); INTERN(s_h2, "_h2"); INTERN(s_tunnels, "_tunnels"); INTERN(s_streams, "streams");
    INTERN(s_state, "state"); INTERN(s_state_machine, "state_machine"); INTERN(s_held, "held");
    INTERN(s_unsent, "unsent"); INTERN(s_peer, "peer"); INTERN(s_write, "write");
    INTERN(s_writelines, "writelines"); INTERN(s_is_closing, "is_closing"); INTERN(s_transport, "transport");
    INTERN(s_session, "session"); INTERN(s_stream_id, "stream_id"); INTERN(s_bytes_received, "bytes_received");
    INTERN(s_bytes_sent, "bytes_sent"); INTERN(s_receiving_paused, "receiving_paused");
    INTERN(s_consumed, "consumed"); INTERN(s_headers_received, "headers_received");
    INTERN(s_expected_content_length, "_expected_content_length");
    INTERN(s_actual_content_length, "_actual_content_length");
    INTERN(s_inbound_window_manager, "_inbound_window_manager");
    INTERN(s_connection_window_manager, "_inbound_flow_control_window_manager");
    INTERN(s_current_window_size, "current_window_size"); INTERN(s_bytes_processed, "_bytes_processed");
    INTERN(s_max_window_size, "max_window_size"); INTERN(s_max_inbound_frame_size, "max_inbound_frame_size");
    INTERN(s_max_outbound_frame_size, "max_outbound_frame_size");
    INTERN(s_outbound_flow_control_window, "outbound_flow_control_window");
    INTERN(s_data_to_send, "_data_to_send"); INTERN(s_chunks, "_chunks"); INTERN(s_draining, "draining");
    INTERN(s_flush, "flush");
    INTERN(s_python_data_received, "_data_received_python"); INTERN(s_data_received, "data_received");

    if (PyType_Ready(&SessionBaseType) < 0 || PyType_Ready(&StreamBaseType) < 0
        || PyType_Ready(&TcpSideBaseType) < 0)
        return NULL;
    session_method = PyDict_GetItemWithError(SessionBaseType.tp_dict, s_data_received);   /* held by the types */
    side_method = PyDict_GetItemWithError(TcpSideBaseType.tp_dict, s_data_received);
    if (session_method == NULL || side_method == NULL) return NULL;
    PyObject *module = PyModule_Create(&relay_module);
    if (module == NULL) return NULL;
    if (PyModule_AddIntConstant(module, "API", LANE_API) < 0
        || PyModule_AddObjectRef(module, "SessionBase", (PyObject *)&SessionBaseType) < 0
        || PyModule_AddObjectRef(module, "StreamBase", (PyObject *)&StreamBaseType) < 0
        || PyModule_AddObjectRef(module, "TcpSideBase", (PyObject *)&TcpSideBaseType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
