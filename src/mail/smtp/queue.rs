//! The mail queue and its workers: mails wait in one queue; up to `pool_max_size` workers each
//! take a connection and send what is queued (see [`super::pipeline`] for one worker's round).

use std::collections::VecDeque;
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
    /// The ticket of the next mail queued.
    next_ticket: u64,
}

/// A mail waiting for a worker, and where its outcome goes.
pub(super) struct Queued {
    pub wire: Wire,
    pub done: oneshot::Sender<Result<(), MailError>>,
    /// Names the mail in the queue, so its sender can withdraw it (set when queued).
    pub ticket: u64,
}

impl Queue {
    /// Drops, unsent, the mails at the front that nobody waits for any more: their caller gave
    /// up on them (a lost claim, a shutdown) and will not record them, so sending them now could
    /// only duplicate what the next holder of the request sends.
    fn drop_abandoned(&mut self) {
        while self.waiting.front().is_some_and(|m| m.done.is_closed()) {
            self.waiting.pop_front();
        }
    }
}

impl Queued {
    pub(super) fn finish(self, outcome: Result<(), MailError>) {
        // The sender may have stopped waiting (shutdown); the outcome is then nobody's.
        let _ = self.done.send(outcome);
    }
}

impl Inner {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `mail`, starting a worker when fewer than the most are at work; returns its ticket.
    pub(super) fn enqueue(self: &Arc<Self>, mut mail: Queued) -> u64 {
        let mut queue = self.queue();
        mail.ticket = queue.next_ticket;
        queue.next_ticket += 1;
        let ticket = mail.ticket;
        if queue.closed {
            drop(queue);
            mail.finish(Err(closed()));
            return ticket;
        }
        queue.waiting.push_back(mail);
        if queue.workers < self.max_workers {
            queue.workers += 1;
            tokio::spawn(Arc::clone(self).work());
        }
        ticket
    }

    /// Takes the mail `ticket` off the queue if no worker has started on it yet (one put back
    /// after a failed connection counts as not started: nothing of it was accepted). `false`:
    /// it is being sent, or is done.
    pub(super) fn withdraw(&self, ticket: u64) -> bool {
        let mut queue = self.queue();
        let before = queue.waiting.len();
        queue.waiting.retain(|m| m.ticket != ticket);
        queue.waiting.len() < before
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
