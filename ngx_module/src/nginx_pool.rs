//! Drainers as tasks of an nginx `thread_pool` (`wsgi_thread_pool NAME`): that pool's fixed
//! threads run them. nginx's task API belongs to the event loop: tasks are posted from there
//! only, and a drainer that wants a successor asks the loop through the notifier.

use std::ffi::c_void;
use std::sync::Mutex;

use nginx_sys::{
    ngx_event_t, ngx_int_t, ngx_log_t, ngx_thread_pool_t, ngx_thread_task_post, ngx_thread_task_t,
    NGX_OK,
};

use crate::drain::Drain;
use crate::ffi::guard;

struct Drainer {
    /// First, so that a pointer to the drainer is a pointer to its task.
    task: ngx_thread_task_t,
    queue: &'static dyn Drain,
    tasks: &'static Tasks,
}

struct TaskPtr(*mut Drainer);
// SAFETY: idle drainers are only taken and posted by the event loop.
unsafe impl Send for TaskPtr {}

/// The drainer tasks of one nginx thread pool.
pub(crate) struct Tasks {
    pool: *mut ngx_thread_pool_t,
    /// Drainer tasks whose completion handler has run: free to post again.
    idle: Mutex<Vec<TaskPtr>>,
}

// SAFETY: `pool` is only used by the event loop (to post tasks); `idle` is behind its mutex.
unsafe impl Sync for Tasks {}
// SAFETY: as above.
unsafe impl Send for Tasks {}

impl Tasks {
    pub(crate) fn new(pool: *mut ngx_thread_pool_t) -> Tasks {
        Tasks {
            pool,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Posts a drainer of `queue`; false if nginx refused it (its queue is full: it logged why).
    ///
    /// # Safety
    /// Event-loop thread.
    pub(crate) unsafe fn post(&'static self, queue: &'static dyn Drain) -> bool {
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let drainer = match reused {
            Some(t) => t.0,
            None => {
                let drainer = Box::into_raw(Box::new(Drainer {
                    // SAFETY: an all-zero task is what `ngx_thread_task_alloc` hands out.
                    task: unsafe { std::mem::zeroed() },
                    queue,
                    tasks: self,
                }));
                // SAFETY: the drainer was just allocated and is never freed (reused by the pool).
                unsafe {
                    (*drainer).task.ctx = drainer.cast();
                    (*drainer).task.handler = Some(run);
                    (*drainer).task.event.handler = Some(ran);
                    (*drainer).task.event.data = drainer.cast();
                }
                drainer
            }
        };
        // SAFETY: the task is idle (new, or its completion handler has run), on the event loop.
        let rc = unsafe { ngx_thread_task_post(self.pool, &mut (*drainer).task) };
        if rc != NGX_OK as ngx_int_t {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(TaskPtr(drainer));
            return false;
        }
        true
    }
}

/// A pool thread of nginx's.
unsafe extern "C" fn run(data: *mut c_void, _log: *mut ngx_log_t) {
    // SAFETY: `data` is the task's context, the drainer itself, alive for the process.
    let queue = unsafe { (*(data as *mut Drainer)).queue };
    guard("running the wsgi queue", (), || queue.drain());
}

/// The drainer's task is done (event loop): it may be posted again.
unsafe extern "C" fn ran(ev: *mut ngx_event_t) {
    guard("a wsgi drainer finished", (), || {
        // SAFETY: the event's data is its drainer, alive for the process.
        let drainer = unsafe { (*ev).data as *mut Drainer };
        // SAFETY: as above.
        let tasks = unsafe { (*drainer).tasks };
        tasks
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(TaskPtr(drainer));
    })
}
