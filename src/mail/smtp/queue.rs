//! The mail queue and its workers: mails wait in one queue; up to `pool_max_size` workers each
//! take a connection and send what is queued (see [`super::pipeline`] for one worker's round).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, MutexGuard};

use tokio::sync::oneshot;

use super::super::MailError;
use super::dial::Connection;
use super::wire::Wire;
use super::{Inner, closed};

#[derive(Default)]
pub(super) struct Queue {
    waiting: VecDeque<Queued>,
    workers: usize,
    closed: bool,
}

/// A mail waiting for a worker, and where its outcome goes.
pub(super) struct Queued {
    pub wire: Wire,
    pub done: oneshot::Sender<Result<(), MailError>>,
    /// Shared with the sender: whether the mail was withdrawn, or its message is being written.
    pub fate: Arc<Fate>,
}

/// Who got to a mail first: its sender withdrawing it, or a worker writing its message. Nothing
/// of a mail is delivered before its message (what follows the server's 354 to DATA) is
/// written, so until then a withdrawn mail is simply not sent, wherever it is: queued, its
/// connection opening, its MAIL, RCPT and DATA under way or pipelined.
#[derive(Default)]
pub(super) struct Fate(AtomicU8);

const OPEN: u8 = 0;
const WRITING: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Fate {
    /// The sender takes the mail back; `false`: too late, its message is being written.
    pub(super) fn withdraw(&self) -> bool {
        let won = self
            .0
            .compare_exchange(OPEN, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire);
        won.is_ok() || won == Err(WITHDRAWN)
    }
}

impl Queue {
    /// Drops, unsent, the mails at the front that nobody waits for any more: their caller gave
    /// up on them (a lost claim, a shutdown) and will not record them, so sending them now could
    /// only duplicate what the next holder of the request sends.
    fn drop_abandoned(&mut self) {
        while self.waiting.front().is_some_and(Queued::abandoned) {
            self.waiting.pop_front();
        }
    }
}

impl Queued {
    /// Its sender has gone, or withdrew it.
    pub(super) fn abandoned(&self) -> bool {
        self.done.is_closed() || self.fate.0.load(Ordering::Acquire) == WITHDRAWN
    }

    /// Called just before the message is written: `false` when its sender has gone or withdrew
    /// it (then it must not be written); from `true` on, it can no longer be withdrawn.
    pub(super) fn commit(&self) -> bool {
        let fate = &self.fate.0;
        !self.done.is_closed()
            && fate
                .compare_exchange(OPEN, WRITING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    pub(super) fn finish(self, outcome: Result<(), MailError>) {
        // The sender may have stopped waiting (shutdown); the outcome is then nobody's.
        let _ = self.done.send(outcome);
    }
}

impl Inner {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `mail`, starting a worker when fewer than the most are at work.
    pub(super) fn enqueue(self: &Arc<Self>, mail: Queued) {
        let mut queue = self.queue();
        if queue.closed {
            drop(queue);
            return mail.finish(Err(closed()));
        }
        queue.waiting.push_back(mail);
        if queue.workers < self.max_workers {
            queue.workers += 1;
            tokio::spawn(Arc::clone(self).work());
        }
    }

    /// Refuses mail from now on; returns the mails still waiting.
    pub(super) fn close_queue(&self) -> VecDeque<Queued> {
        let mut queue = self.queue();
        queue.closed = true;
        std::mem::take(&mut queue.waiting)
    }

    /// The next mail; with none, the worker retires (in the same step, so a mail queued
    /// meanwhile always finds a worker).
    fn next_or_retire(&self) -> Option<Queued> {
        let mut queue = self.queue();
        queue.drop_abandoned();
        let next = queue.waiting.pop_front();
        if next.is_none() {
            queue.workers -= 1;
        }
        next
    }

    /// The next mail when it can be pipelined behind a message.
    pub(super) fn next_pipelinable(&self) -> Option<Queued> {
        let mut queue = self.queue();
        queue.drop_abandoned();
        if queue.waiting.front()?.wire.pipelinable {
            queue.waiting.pop_front()
        } else {
            None
        }
    }

    /// Puts back a mail that was not sent, to go first on another connection.
    pub(super) fn retry_first(&self, mail: Queued) {
        self.queue().waiting.push_front(mail);
    }

    async fn work(self: Arc<Self>) {
        while let Some(mail) = self.next_or_retire() {
            self.deliver(mail).await;
        }
    }

    /// Keeps `conn` for the next mail, unless the mailer was closed.
    pub(super) fn keep(&self, conn: Connection) {
        if !self.queue().closed {
            self.pool.put(conn);
        }
    }
}
