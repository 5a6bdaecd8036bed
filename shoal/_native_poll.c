/* The native transports' own epoll: one per event loop, for all its native transports.
 *
 * Why: through add_reader, each readable socket costs the loop (uvloop) a Python-level handle and a call
 * through it, per event; those were about a tenth of the ztunnel's samples at 1000 requests/s (see
 * ztunnel/PERFORMANCE.md). Here the transports' sockets sit in an epoll of their own, and only that epoll's
 * fd is registered with the loop: when it is readable, Poller._dispatch asks it which transports are ready
 * (epoll_wait with no timeout) and runs their read and write steps in C, with no handle per transport.
 *
 * What holds what: a transport in the epoll is referenced by it (the loop's handle did that before), from
 * the moment it asks for an event until it asks for none; the Poller holds no loop (native_io keeps one
 * Poller per loop, keyed weakly by it) and uses the transport's own. Level-triggered, as add_reader is: a
 * transport that leaves bytes unread is ready again at the next pass, and at most MAX_READY transports run
 * per pass, the rest at the next. A hang-up or an error counts as readable and writable, as the loop's own.
 */

#include "_native.h"
#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

enum { MAX_READY = 64 };

struct Poller {
    PyObject_HEAD
    int epfd;
    Py_ssize_t watched;         /* transports in the epoll: the loop watches epfd while there are any */
    PyObject *loop;             /* the loop that watches epfd (borrowed from a transport; only while watched) */
};

static PyObject *s_add_reader, *s_remove_reader, *s_dispatch, *s_call_soon, *s_clear;

/* Drops the epoll's reference to a transport it let go. Never the last one here and now: the caller may be
   running that transport's code (a close from its own callback), so a last reference goes to the loop, which
   drops it on its next pass. */
static int release(Transport *t) {
    if (Py_REFCNT(t) > 1) {
        Py_DECREF(t);
        return 0;
    }
    PyObject *keep = PyList_New(1);
    if (keep == NULL) return -1;
    PyList_SET_ITEM(keep, 0, (PyObject *)t);   /* the reference moves into the list */
    PyObject *clear = PyObject_GetAttr(keep, s_clear);
    PyObject *r = clear ? PyObject_CallMethodObjArgs(t->loop, s_call_soon, clear, NULL) : NULL;
    Py_XDECREF(clear);
    if (r == NULL) PyList_SET_ITEM(keep, 0, NULL);   /* a closed loop: the transport is kept, not freed in use */
    Py_DECREF(keep);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static int loop_watch(Poller *p, PyObject *loop, int on) {
    PyObject *fd = PyLong_FromLong(p->epfd), *r = NULL;
    if (fd == NULL) return -1;
    if (on) {
        PyObject *dispatch = PyObject_GetAttr((PyObject *)p, s_dispatch);
        r = dispatch ? PyObject_CallMethodObjArgs(loop, s_add_reader, fd, dispatch, NULL) : NULL;
        Py_XDECREF(dispatch);
    } else {
        r = PyObject_CallMethodObjArgs(loop, s_remove_reader, fd, NULL);
    }
    Py_DECREF(fd);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

int poller_set(Transport *t, int reader, int writer) {
    Poller *p = t->poller;
    uint32_t events = (reader ? EPOLLIN : 0) | (writer ? EPOLLOUT : 0);
    struct epoll_event ev = {.events = events, .data.ptr = t};
    if (events && t->polled) {
        if (epoll_ctl(p->epfd, EPOLL_CTL_MOD, t->fd, &ev) < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
        return 0;
    }
    if (events) {
        if (p->watched > 0 && p->loop != t->loop) {
            PyErr_SetString(PyExc_RuntimeError, "a native transport's poller belongs to another event loop");
            return -1;
        }
        if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, t->fd, &ev) < 0) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
        if (p->watched == 0 && loop_watch(p, t->loop, 1) < 0) {
            epoll_ctl(p->epfd, EPOLL_CTL_DEL, t->fd, NULL);
            return -1;
        }
        if (p->watched++ == 0) p->loop = t->loop;
        t->polled = 1;
        Py_INCREF(t);
        return 0;
    }
    if (!t->polled) return 0;
    /* ENOENT / EBADF: the socket was closed under the transport, and the kernel took it out already. */
    int rc = epoll_ctl(p->epfd, EPOLL_CTL_DEL, t->fd, NULL) < 0 && errno != ENOENT && errno != EBADF ? -1 : 0;
    if (rc < 0) PyErr_SetFromErrno(PyExc_OSError);
    t->polled = 0;
    if (--p->watched == 0) {
        p->loop = NULL;
        if (loop_watch(p, t->loop, 0) < 0) rc = -1;
    }
    if (release(t) < 0) rc = -1;
    return rc;
}

/* A step that raised: the loop's exception handler hears it, as it would from a handle's callback. */
static void report(Transport *t) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
    Py_XDECREF(type); Py_XDECREF(tb);
    PyObject *context = Py_BuildValue("{s:s,s:O,s:O}", "message", "Exception in a native transport's event",
                                      "exception", value ? value : Py_None, "transport", (PyObject *)t);
    PyObject *r = context ? PyObject_CallMethod(t->loop, "call_exception_handler", "O", context) : NULL;
    if (r == NULL) PyErr_WriteUnraisable((PyObject *)t);
    Py_XDECREF(r); Py_XDECREF(context); Py_XDECREF(value);
}

/* The loop's reader callback for epfd: the ready transports' steps, in C. */
static PyObject *poller_dispatch(Poller *p, PyObject *unused) {
    struct epoll_event ready[MAX_READY];
    int n;
    do n = epoll_wait(p->epfd, ready, MAX_READY, 0); while (n < 0 && errno == EINTR);
    if (n < 0) return PyErr_SetFromErrno(PyExc_OSError);
    /* Each held for the pass: one transport's step may close another (a relay's two sides), whose event
       is then skipped, not run on a freed transport. */
    for (int i = 0; i < n; i++) Py_INCREF((PyObject *)ready[i].data.ptr);
    for (int i = 0; i < n; i++) {
        Transport *t = ready[i].data.ptr;
        uint32_t e = ready[i].events, both = EPOLLHUP | EPOLLERR;
        if (!t->closed && t->reader_on && (e & (EPOLLIN | both)) && core_readable(t) < 0) report(t);
        if (!t->closed && t->writer_on && (e & (EPOLLOUT | both)) && core_writable(t) < 0) report(t);
    }
    for (int i = 0; i < n; i++) Py_DECREF((PyObject *)ready[i].data.ptr);
    Py_RETURN_NONE;
}

static PyObject *poller_watched(Poller *p, void *closure) { return PyLong_FromSsize_t(p->watched); }

static int poller_init(Poller *p, PyObject *args, PyObject *kwargs) {
    if (!PyArg_ParseTuple(args, ":Poller")) return -1;
    if (p->epfd > 0) { PyErr_SetString(PyExc_RuntimeError, "a Poller is made once"); return -1; }
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) { p->epfd = 0; PyErr_SetFromErrno(PyExc_OSError); return -1; }
    return 0;
}

/* Only when no transport is in it (each holds it): the epoll fd goes with it. */
static void poller_dealloc(Poller *p) {
    if (p->epfd > 0) close(p->epfd);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyMethodDef poller_methods[] = {
    {"_dispatch", (PyCFunction)poller_dispatch, METH_NOARGS, "The loop's reader callback for the epoll."},
    {NULL}
};

static PyGetSetDef poller_getset[] = {
    {"watched", (getter)poller_watched, NULL, "How many transports are in the epoll now.", NULL},
    {NULL}
};

PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal._native.Poller",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An epoll of native transports, one fd for the loop to watch (see shoal/_native_poll.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)poller_init,
    .tp_dealloc = (destructor)poller_dealloc,
    .tp_methods = poller_methods,
    .tp_getset = poller_getset,
};

int poller_ready(void) {
    if ((s_add_reader = PyUnicode_InternFromString("add_reader")) == NULL
        || (s_remove_reader = PyUnicode_InternFromString("remove_reader")) == NULL
        || (s_dispatch = PyUnicode_InternFromString("_dispatch")) == NULL
        || (s_call_soon = PyUnicode_InternFromString("call_soon")) == NULL
        || (s_clear = PyUnicode_InternFromString("clear")) == NULL)
        return -1;
    return PyType_Ready(&PollerType);
}
