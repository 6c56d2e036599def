//! The life of one request, on nginx's side, in the order it happens:
//!
//! 1. [`content_handler`]: nginx starts reading the body (or, unbuffered, starts the app at
//!    once) and calls [`body_ready`].
//! 2. [`post`]: copies what the app needs into a [`Job`] (the request's pool frees it) and
//!    queues it for the location's thread pool; the request stays `blocked` meanwhile.
//! 3. [`run`] on a pool thread: the app and its whole response iteration, nothing of nginx's.
//!    Streamed pieces reach the loop through the job's stream ([`on_client_writable`] and
//!    [`on_client_readable`] keep it going); an unbuffered body arrives through
//!    [`on_body_data`]; [`on_deadline`] answers 504 if the app takes too long.
//! 4. [`complete`], back on the event loop through the notifier: the response (or its end) goes
//!    out and the request is finalized.

use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nginx_sys::{
    ngx_event_flags, ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_pool_cleanup_add,
    ngx_post_event, ngx_posted_events, NGX_DONE, NGX_ERROR, NGX_HTTP_CLIENT_CLOSED_REQUEST,
    NGX_HTTP_GATEWAY_TIME_OUT, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_VERSION_20,
    NGX_USE_LEVEL_EVENT,
};
use ngx_wsgi::{run_request, Apps, Body, ChunkSink, Outcome, RequestBody, RequestWatch};

use crate::app_turn::{self, AppKind};
use crate::dispatch::{PoolSpec, QueueLimits, Refused, RunQueue};
use crate::ffi::{guard, timer};
use crate::job::Job;
use crate::request_body::BodyStream;
use crate::stream::{ClientEvents, Stream, TimeoutAnswer};

/// The content handler of every `wsgi_app` location (installed when the configuration merges).
pub(crate) unsafe extern "C" fn content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard(
        "the wsgi content handler",
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        // SAFETY: nginx passes a live request in its content phase.
        || unsafe { crate::request_body::read_then(r, Some(body_ready)) },
    )
}

unsafe extern "C" fn body_ready(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this with the live request whose body has been read (or is read as it
    // arrives).
    unsafe { crate::request_body::post_or_fail(r, post) }
}

/// Builds the request's job and queues it for a pool thread.
unsafe fn post(r: *mut ngx_http_request_t) -> Result<(), u32> {
    // SAFETY: `r` is live on the event loop; this location has wsgi_app, so the configuration is
    // ours.
    let (lc, mc) = unsafe {
        (
            crate::conf::loc_conf(&*r).ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR)?,
            crate::conf::main_conf_of(&*r).ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR)?,
        )
    };
    let app = lc.app.index.and_then(Apps::get).ok_or_else(|| {
        crate::recycle::unloaded_app_asked("wsgi");
        NGX_HTTP_INTERNAL_SERVER_ERROR
    })?;
    // SAFETY: `r` is live on the event loop.
    let (info, body) = unsafe { crate::request_info::collect(r, lc, mc.request_id.0) };
    let (body, body_stream) = match body {
        Some(body) => (RequestBody::Buffered(body), None),
        None => {
            // SAFETY: `r` is live on the event loop and reads its body unbuffered; `pull` takes
            // what arrived so far.
            let stream = unsafe {
                let stream = BodyStream::new(r, lc.streaming.stream_buffer);
                stream.pull(r);
                (*r).read_event_handler = Some(on_body_data);
                stream
            };
            (RequestBody::Streamed(stream.clone()), Some(stream))
        }
    };
    if body_stream.is_none() {
        // From now on a client that goes away (an HTTP/2 stream reset, a closed connection) is
        // noticed, also before a thread takes the request: it is then never run.
        // SAFETY: `r` is live on the event loop; the handler finds the job through the request.
        unsafe { (*r).read_event_handler = Some(on_client_readable) };
    }
    let events = ClientEvents {
        writable: Some(on_client_writable),
        readable: Some(on_client_readable),
    };
    let stream = Stream::new(r, lc.streaming.stream_buffer, events);
    let watch = Arc::new(RequestWatch::default());
    stream.run_by(watch.clone());
    let job = Box::into_raw(Box::new(Job {
        request: r,
        app,
        info,
        body: Some(body),
        stream,
        body_stream,
        watch,
        read_timeout: lc.limits.read_timeout,
        // SAFETY: an all-zero ngx_event_t is nginx's own initial state for an event.
        deadline: unsafe { std::mem::zeroed() },
        timed_out: None,
        expired: false,
        queue: None,
        holds_lost_slot: false,
        posted_at: Instant::now(),
        outcome: None,
    }));
    // SAFETY: the request pool is live; the cleanup frees the job when the request is destroyed,
    // which cannot happen while the task is outstanding (`blocked`).
    unsafe {
        let cln = ngx_pool_cleanup_add((*r).pool, 0);
        if cln.is_null() {
            drop(Box::from_raw(job));
            return Err(NGX_HTTP_INTERNAL_SERVER_ERROR);
        }
        (*cln).handler = Some(drop_job);
        (*cln).data = job.cast();
        Job::attach(r, job);

        crate::main_blocked::hold(r);
        let limits = QueueLimits {
            max_queue: mc.limits.max_queue(),
            queue_timeout: mc.limits.queue_timeout(),
        };
        let queue = RunQueue::of(&PoolSpec {
            nginx_pool: lc.streaming.thread_pool,
            max_threads: mc.limits.max_threads(),
            limits,
            run,
            expired: expired_in_queue,
        });
        (*job).queue = Some(queue);
        // A worker whose threads are stuck can run none of this: refused at once while the
        // worker is replaced.
        if crate::stuck_pool::recycle_if_stuck(queue, limits.queue_timeout) {
            crate::main_blocked::release(r);
            return Err(crate::overload::refuse(
                r,
                Refused::PoolStuck,
                limits.queue_timeout,
            ));
        }
        // Counted before a thread can take it (and count it taken): the gauge never dips below
        // zero.
        crate::metrics::posted();
        if let Err(why) = queue.submit(job) {
            crate::metrics::unposted();
            crate::main_blocked::release(r);
            return Err(crate::overload::refuse(r, why, limits.queue_timeout));
        }
        app_turn::begin(r, AppKind::Wsgi);
        let log = (*(*r).connection).log;
        timer::arm(
            &mut (*job).deadline,
            Some(on_deadline),
            job.cast(),
            log,
            lc.limits.read_timeout,
        );
        let gone = match &(*job).body_stream {
            // The first read of its body (above) found the connection ended.
            Some(_) => (*(*r).connection).error() != 0,
            None => crate::client_watch::left_with_its_request(r),
        };
        if gone {
            // A client that went while nginx read its request (a close right behind it) left
            // no event behind. Its app's output stops now; a posted read event ends the request
            // once nginx's content handler is over (ended here, inside it, the request would be
            // freed before that handler's own finalize).
            (*job).stream.client_gone();
            (*r).read_event_handler = Some(on_client_readable);
            ngx_post_event(
                (*(*r).connection).read,
                std::ptr::addr_of_mut!(ngx_posted_events),
            );
        }
    }
    Ok(())
}

unsafe extern "C" fn drop_job(data: *mut c_void) {
    guard("freeing a request", (), || {
        // SAFETY: `data` is the Box leaked in `post`, freed exactly once by this cleanup.
        drop(unsafe { Box::from_raw(data as *mut Job) });
    })
}

/// Runs on a pool thread: the app, and nothing of nginx's.
///
/// # Safety
/// `job` is live and touched by no other thread but for its shared streams and watch.
unsafe fn run(job: *mut Job) {
    // SAFETY: per the function contract. Only the fields used here are borrowed: the event loop
    // reads the streams meanwhile, and nothing else until completion.
    unsafe {
        let body = (*job)
            .body
            .take()
            .unwrap_or(RequestBody::Buffered(Body::empty()));
        if (*job).stream.is_cancelled() {
            // Its client went away while it waited for a thread (or its deadline passed): a
            // flood of reset HTTP/2 streams would otherwise hold the threads that live
            // requests wait for, with work nobody will read.
            skip_unrun(job);
            return;
        }
        let (app, info, sink) = ((*job).app, &(*job).info, (*job).stream.clone());
        // nginx's own pool threads (wsgi_thread_pool) come with nginx's mask, SIGCHLD blocked.
        ngx_wsgi::signals::block_server_signals();
        crate::metrics::thread_started();
        let outcome = guard("running the app", None, || {
            Some(run_request(
                app,
                info,
                body,
                Some(sink),
                Some(&(*job).watch),
            ))
        });
        (*job).stream.app_returned();
        crate::metrics::thread_finished(outcome.as_ref().map_or(Duration::ZERO, |o| o.gil_wait));
        (*job).outcome = outcome;
    }
    // Before the thread's next request, which may be the next job of the same drain (requests
    // that queued meanwhile) as well as a later one.
    ngx_wsgi::signals::block_server_signals();
}

/// Back on the event loop once the pool thread is done (the notifier's `on_finished`).
///
/// # Safety
/// Event-loop thread; `item` is a live job no pool thread touches any more.
pub(crate) unsafe fn complete(item: *mut c_void) {
    let job = item as *mut Job;
    // SAFETY: the job is alive until the request is destroyed; the request and its connection
    // stay valid while `blocked` was held.
    let (r, c) = unsafe {
        let r = (*job).request;
        (r, (*r).connection)
    };
    // What to finalize the request with: the request is finalized exactly once, here, even when
    // sending panics (then the connection is cut if the response had started, else a 500).
    let rc = guard("sending the response", None, || {
        // SAFETY: as above; nothing here finalizes the request or frees the job.
        unsafe {
            // First: the job (and its timer's event) is freed with the request, which is
            // finalized even when something below panics.
            timer::disarm(&mut (*job).deadline);
            if (*job).holds_lost_slot {
                if let Some(queue) = (*job).queue {
                    queue.slot_back();
                }
            }
            let body = (*job).body_stream.as_deref();
            let streamed = app_turn::end(r, AppKind::Wsgi, body, &(*job).stream);
            let client_fault = match &(*job).body_stream {
                Some(b) if (*job).timed_out.is_none() && !(*job).expired => {
                    b.client_fault_answer(r, streamed.head_sent)
                }
                _ => None,
            };
            if streamed.ended_by_server && !streamed.failed {
                // An event stream ended at worker exit went out whole, with its app's status.
                let status = (*r).headers_out.status as u16;
                crate::metrics::finished(status, (*job).posted_at.elapsed(), false, false);
            } else {
                // Gone before its head went out: it ends as 499 (after it, as what was sent).
                let gone = (*c).error() != 0 && !streamed.head_sent;
                count_finished(&*job, client_fault, gone);
            }
            Some(match ((*job).timed_out, client_fault) {
                // A 504 went out at the deadline; the app's late answer is dropped. NGX_DONE:
                // the error page's, whose reference on the request is let go; the request is
                // ended instead when its client went meanwhile (nginx's termination waited for
                // the thread).
                (Some(rc), _) if rc == NGX_DONE as ngx_int_t && (*c).error() != 0 => {
                    NGX_ERROR as ngx_int_t
                }
                (Some(rc), _) => rc,
                (None, Some(status)) => status,
                (None, None) if (*job).expired => {
                    let timeout =
                        crate::conf::main_conf_of(&*r).map_or(0, |mc| mc.limits.queue_timeout());
                    crate::overload::refuse(r, Refused::Expired, timeout) as ngx_int_t
                }
                (None, None) => crate::response::send(r, (*job).outcome.as_ref(), streamed),
            })
        }
    });
    // SAFETY: the request is live until this finalize.
    unsafe {
        let rc = rc.unwrap_or(if (*r).header_sent() != 0 {
            NGX_ERROR as ngx_int_t
        } else {
            NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
        });
        app_turn::finalize(r, rc);
    }
}

/// The queue's sweeper took the request out: it waited longer than `wsgi_queue_timeout` for a
/// thread and never ran. It is answered like one that comes back from Python.
///
/// # Safety
/// Event-loop thread; `job` is live and no pool thread has it.
unsafe fn expired_in_queue(job: *mut Job) {
    // SAFETY: per the function contract.
    unsafe {
        (*job).expired = true;
        crate::metrics::dequeued_unrun();
        complete(job.cast());
    }
}

/// Counts the request's end; `client_fault` is the status its broken body answers with, and
/// `gone` says the connection ended before the response began (the request ends as 499,
/// whatever the app said).
fn count_finished(job: &Job, client_fault: Option<ngx_int_t>, gone: bool) {
    let duration = job.posted_at.elapsed();
    let timed_out = job.timed_out.is_some();
    match client_fault {
        // The 504 went out first, even when the deadline passed in the queue (before the queue
        // timeout): it gives back the slot its timeout counted lost.
        _ if timed_out => {}
        _ if gone => return crate::metrics::finished(499, duration, false, true),
        _ if job.expired => return crate::metrics::finished(503, duration, false, false),
        Some(status) => {
            let gone = status == NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t;
            return crate::metrics::finished(status as u16, duration, false, gone);
        }
        None => {}
    }
    crate::metrics::finished_outcome(job.outcome.as_ref(), duration, timed_out);
}

/// While a response streams: the client can take more.
unsafe extern "C" fn on_client_writable(r: *mut ngx_http_request_t) {
    guard("the wsgi stream writer", (), || {
        // SAFETY: nginx calls this on the event loop with the live request; only the shared
        // stream of its job is used.
        unsafe {
            if let Some(job) = Job::of(r) {
                (*job).stream.on_writable(r);
            }
        }
    })
}

/// From the hand-over (once an unbuffered body is in): the client's side of the connection
/// changed (it may be gone).
unsafe extern "C" fn on_client_readable(r: *mut ngx_http_request_t) {
    guard("the wsgi stream reader", (), || {
        // SAFETY: as in `on_client_writable`.
        unsafe {
            if let Some(job) = Job::of(r) {
                watch_client(job, r);
            }
        }
    })
}

/// Notices a client that went away: its app's output stops, and a request still waiting for a
/// thread ends now.
///
/// # Safety
/// Event-loop thread, for the request's read event; `job` is `r`'s live job. It may be freed
/// on return.
unsafe fn watch_client(job: *mut Job, r: *mut ngx_http_request_t) {
    // SAFETY: per the function contract.
    unsafe {
        (*job).stream.on_readable(r);
        if (*(*r).connection).error() != 0 && (*job).stream.is_cancelled() {
            // Logged as it went (a 499 where nothing was sent), as nginx logs a proxied
            // request whose client went, not when the app's thread comes back.
            crate::access_log::write_now(r, Some(NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t));
        }
        answer_if_gone_while_queued(job);
    }
}

/// A request whose client went away while it waited for a thread is taken out of its queue and
/// ends now (499, as nginx's proxy ends one whose client goes): it frees its `wsgi_max_queue`
/// slot and its connection without waiting for a drainer to skip it.
///
/// # Safety
/// Event-loop thread; `job` is live. It may be freed on return (its request finalized).
unsafe fn answer_if_gone_while_queued(job: *mut Job) {
    // SAFETY: per the function contract; `queue` and the stream are only read, and a job taken
    // back out of its queue is touched by no pool thread.
    unsafe {
        if !(*job).stream.is_cancelled() || !(*job).queue.is_some_and(|q| q.withdraw(job)) {
            return;
        }
        skip_unrun(job);
        complete(job.cast());
    }
}

/// A queued request whose client went away is not run: it ends as its client left.
///
/// # Safety
/// `job` is live and touched by no other thread (taken out of its queue, by a drainer or the
/// loop).
unsafe fn skip_unrun(job: *mut Job) {
    // SAFETY: per the function contract.
    unsafe {
        (*job).stream.app_returned();
        crate::metrics::dequeued_unrun();
        (*job).outcome = Some(Outcome::client_gone(false));
    }
}

/// An unbuffered body: the client sent more. This is the request's read handler while the body
/// arrives, so it also notices a client that goes away, and hands over once the body is in.
unsafe extern "C" fn on_body_data(r: *mut ngx_http_request_t) {
    guard("the wsgi request body reader", (), || {
        // SAFETY: nginx calls this on the event loop with the live request; only the shared
        // streams of its job are used.
        unsafe {
            let Some(job) = Job::of(r) else { return };
            let failed = (*job).body_stream.as_ref().is_some_and(|body| body.pull(r));
            if (*(*r).connection).error() != 0 {
                (*job).stream.client_gone();
                crate::access_log::write_now(r, Some(NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t));
                answer_if_gone_while_queued(job);
            } else if (*r).reading_body() == 0 || failed {
                // The body is in (or nginx's reader is done with a broken one): only the
                // client's going is watched from now on, as for a buffered body (which also
                // stops a level-triggered event from firing on unread bytes), a close that came
                // with the body's end included.
                (*r).read_event_handler = Some(on_client_readable);
                watch_client(job, r);
            }
        }
    })
}

/// `wsgi_read_timeout`: the request is still inside Python at its deadline. It gets a 504 at
/// once; its Python stack goes to the error log and its thread is interrupted with
/// `TimeoutError` (by the core's watchdog: the event loop never waits for the GIL). Where the
/// location has an `error_page 504`, the 504 is nginx's, its error page served now while the
/// thread still has the job: the job keeps a reference on the request, which `complete` lets go
/// of instead of finalizing the request a second time.
pub(crate) unsafe extern "C" fn on_deadline(ev: *mut ngx_event_t) {
    guard("the wsgi read timeout", (), || {
        // SAFETY: the event's data is its job; the request is live while the task is
        // outstanding, which is the only time this timer is set.
        unsafe {
            let job = (*ev).data as *mut Job;
            let r = (*job).request;
            if (*job).stream.ended_by_server() {
                // An event stream ended at exit: its client has its whole response.
                return;
            }
            let what = format!(
                "wsgi_read_timeout: \"{}\" is still inside Python after {} ms",
                (*job).info.request_line().escape_debug(),
                (*job).read_timeout
            );
            (*job).watch.interrupt_in_background(what);
            crate::metrics::timed_out((*job).posted_at.elapsed());
            if (*job).watch.started() {
                if let Some(queue) = (*job).queue {
                    queue.slot_lost();
                    (*job).holds_lost_slot = true;
                }
            }
            // A main request's only (a subrequest's parent waits for its end, the thread's)
            // whose client is still there; not with level-triggered events (poll, select),
            // whose client events nginx's deferred termination of a blocked request leaves
            // armed.
            let answer = match r == (*r).main
                && (*r).http_version <= NGX_HTTP_VERSION_20 as usize
                && (*(*r).connection).error() == 0
                && ngx_event_flags & NGX_USE_LEVEL_EVENT as usize == 0
                && crate::intercept_errors::has_error_page(r, 504)
            {
                true => TimeoutAnswer::AtFinalize,
                false => TimeoutAnswer::PageNow,
            };
            let (rc, answered) = (*job).stream.time_out(r, answer);
            let to_error_page = !answered && rc == NGX_HTTP_GATEWAY_TIME_OUT as ngx_int_t;
            (*job).timed_out = Some(if to_error_page {
                NGX_DONE as ngx_int_t
            } else {
                rc
            });
            if let Some(body) = &(*job).body_stream {
                body.fail("wsgi_read_timeout: the request timed out");
            }
            if answered {
                // Answered (or cut) now: logged now, as a proxied request's timeout is.
                crate::access_log::write_now(r, None);
            } else if to_error_page {
                // The error page's internal redirect leaves the job (and the thread's hold,
                // `blocked`) in place; the reference keeps the request when the page ends.
                (*job).stream.let_go(r);
                (*r).set_count((*r).count() + 1);
                app_turn::finalize(r, rc);
                if (*r).header_sent() != 0 {
                    // A page nginx served: logged now, its status known. (An app's page is
                    // logged when the request ends.)
                    crate::access_log::write_now(r, None);
                    crate::stream::end_if_sent_whole(r);
                }
            }
        }
    })
}
