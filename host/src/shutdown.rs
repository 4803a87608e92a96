//! A cloneable "stop now" signal shared by the servers of one process.

use tokio::sync::watch;

/// Resolves [`Shutdown::wait`] once the matching [`Trigger`] fired (or was dropped).
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Fires the shutdown.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A new signal pair.
pub fn pair() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Stops everything waiting on the matching `Shutdown`s.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Waits for the trigger (or for the trigger to be dropped).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}
