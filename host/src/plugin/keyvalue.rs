//! The host side of `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics`,
//! `batch`) over the call's [`Txn`]: buffered writes, reads of committed
//! state, checked at commit (see [`crate::kv`]).
//!
//! Every wait on the store is bounded by the call's deadline: epochs do not
//! tick while the guest waits in a host call, so without this a store that
//! stops answering would hold the call past its time limit.

use std::future::Future;
use std::time::Instant;

use wasmtime::component::Resource;

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::state::HostState;
use crate::kv::{BucketIx, TxnError};

/// An open bucket, as the guest holds it.
pub struct BucketHandle(BucketIx);

/// A `cas` resource: a key and the value the call saw when it was made.
pub struct CasHandle {
    bucket: BucketIx,
    key: String,
    current: Option<Vec<u8>>,
}

type Wasm<T> = wasmtime::Result<T>;

fn to_wit(e: TxnError) -> store::Error {
    match e {
        TxnError::AccessDenied => store::Error::AccessDenied,
        TxnError::Other(m) => store::Error::Other(m),
    }
}

/// Runs a wait on the store within the call's time limit; past it, the
/// call ends as a timeout.
async fn bounded<T>(deadline: Option<Instant>, wait: impl Future<Output = T>) -> Wasm<T> {
    super::wait::bounded(wait, || deadline)
        .await
        .map_err(|_| wasmtime::Trap::Interrupt.into())
}

impl HostState {
    fn bucket(&self, b: &Resource<BucketHandle>) -> Wasm<BucketIx> {
        Ok(self.table.get(b)?.0)
    }

    /// Takes the host's locks on keys about to be read (see
    /// [`crate::kv::Store`]) for at most the call's time limit, and moves
    /// the call's deadline by the time waited.
    async fn lock(&mut self, b: BucketIx, keys: &[String]) {
        let waited = self.kv.lock(b, keys, self.kv_lock_wait).await;
        if let Some(deadline) = &mut self.deadline {
            *deadline += waited;
        }
    }
}

impl store::Host for HostState {
    async fn open(
        &mut self,
        identifier: String,
    ) -> Wasm<Result<Resource<store::Bucket>, store::Error>> {
        match self.kv.open(&identifier) {
            Ok(ix) => Ok(Ok(self.table.push(BucketHandle(ix))?)),
            Err(e) => Ok(Err(to_wit(e))),
        }
    }
}

impl store::HostBucket for HostState {
    async fn get(
        &mut self,
        b: Resource<store::Bucket>,
        key: String,
    ) -> Wasm<Result<Option<Vec<u8>>, store::Error>> {
        let b = self.bucket(&b)?;
        self.lock(b, std::slice::from_ref(&key)).await;
        let read = bounded(self.deadline, self.kv.get(b, &key)).await?;
        Ok(read.map_err(to_wit))
    }

    async fn set(
        &mut self,
        b: Resource<store::Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Wasm<Result<(), store::Error>> {
        let b = self.bucket(&b)?;
        Ok(self.kv.set(b, key, value).map_err(to_wit))
    }

    async fn delete(
        &mut self,
        b: Resource<store::Bucket>,
        key: String,
    ) -> Wasm<Result<(), store::Error>> {
        let b = self.bucket(&b)?;
        Ok(self.kv.delete(b, key).map_err(to_wit))
    }

    async fn exists(
        &mut self,
        b: Resource<store::Bucket>,
        key: String,
    ) -> Wasm<Result<bool, store::Error>> {
        let b = self.bucket(&b)?;
        self.lock(b, std::slice::from_ref(&key)).await;
        let read = bounded(self.deadline, self.kv.get(b, &key)).await?;
        Ok(read.map(|v| v.is_some()).map_err(to_wit))
    }

    async fn list_keys(
        &mut self,
        b: Resource<store::Bucket>,
        cursor: Option<String>,
    ) -> Wasm<Result<store::KeyResponse, store::Error>> {
        let b = self.bucket(&b)?;
        let page = bounded(self.deadline, self.kv.list_keys(b, cursor)).await?;
        Ok(page
            .map(|(keys, cursor)| store::KeyResponse { keys, cursor })
            .map_err(to_wit))
    }

    async fn drop(&mut self, b: Resource<store::Bucket>) -> Wasm<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for HostState {
    async fn increment(
        &mut self,
        b: Resource<store::Bucket>,
        key: String,
        delta: i64,
    ) -> Wasm<Result<i64, store::Error>> {
        let b = self.bucket(&b)?;
        self.lock(b, std::slice::from_ref(&key)).await;
        let sum = bounded(self.deadline, self.kv.increment(b, key, delta)).await?;
        Ok(sum.map_err(to_wit))
    }

    async fn swap(
        &mut self,
        cas: Resource<atomics::Cas>,
        value: Vec<u8>,
    ) -> Wasm<Result<(), atomics::CasError>> {
        let cas = self.table.delete(cas)?;
        // What this call sees now: only its own writes since the `cas` was
        // made can differ here; another writer is found at commit.
        let now = bounded(self.deadline, self.kv.get(cas.bucket, &cas.key)).await?;
        match now {
            Err(e) => Ok(Err(atomics::CasError::StoreError(to_wit(e)))),
            Ok(now) if now != cas.current => {
                let fresh = self.table.push(CasHandle {
                    current: now,
                    ..cas
                })?;
                Ok(Err(atomics::CasError::CasFailed(fresh)))
            }
            Ok(_) => Ok(self
                .kv
                .set(cas.bucket, cas.key, value)
                .map_err(|e| atomics::CasError::StoreError(to_wit(e)))),
        }
    }
}

impl atomics::HostCas for HostState {
    async fn new(
        &mut self,
        b: Resource<store::Bucket>,
        key: String,
    ) -> Wasm<Result<Resource<atomics::Cas>, store::Error>> {
        let bucket = self.bucket(&b)?;
        self.lock(bucket, std::slice::from_ref(&key)).await;
        let read = bounded(self.deadline, self.kv.get(bucket, &key)).await?;
        match read {
            Ok(current) => Ok(Ok(self.table.push(CasHandle {
                bucket,
                key,
                current,
            })?)),
            Err(e) => Ok(Err(to_wit(e))),
        }
    }

    async fn current(
        &mut self,
        cas: Resource<atomics::Cas>,
    ) -> Wasm<Result<Option<Vec<u8>>, store::Error>> {
        Ok(Ok(self.table.get(&cas)?.current.clone()))
    }

    async fn drop(&mut self, cas: Resource<atomics::Cas>) -> Wasm<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for HostState {
    async fn get_many(
        &mut self,
        b: Resource<store::Bucket>,
        keys: Vec<String>,
    ) -> Wasm<Result<Vec<(String, Option<Vec<u8>>)>, store::Error>> {
        let b = self.bucket(&b)?;
        self.lock(b, &keys).await;
        let read = bounded(self.deadline, self.kv.get_many(b, keys)).await?;
        Ok(read.map_err(to_wit))
    }

    async fn set_many(
        &mut self,
        b: Resource<store::Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Wasm<Result<(), store::Error>> {
        let b = self.bucket(&b)?;
        for (key, value) in key_values {
            if let Err(e) = self.kv.set(b, key, value) {
                return Ok(Err(to_wit(e)));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(
        &mut self,
        b: Resource<store::Bucket>,
        keys: Vec<String>,
    ) -> Wasm<Result<(), store::Error>> {
        let b = self.bucket(&b)?;
        for key in keys {
            if let Err(e) = self.kv.delete(b, key) {
                return Ok(Err(to_wit(e)));
            }
        }
        Ok(Ok(()))
    }
}
