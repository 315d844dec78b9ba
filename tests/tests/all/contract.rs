//! The broker contract (`runnel_tests::contract`), run on every backend:
//! the in-memory one and Redis.

use std::sync::Arc;

use runnel::broker::memory::MemoryBroker;
use runnel::broker::redis::{RedisBroker, Trimming};
use runnel::broker::Broker;

runnel_tests::broker_contract!(memory, || async {
    MemoryBroker::new(1024) as Arc<dyn Broker>
});

runnel_tests::broker_contract!(redis, || async {
    RedisBroker::connect(&runnel_tests::redis_url(), Trimming::default())
        .await
        .unwrap() as Arc<dyn Broker>
});

runnel_tests::broker_contract!(redis_cluster, || async {
    runnel_tests::cluster_broker().await as Arc<dyn Broker>
});
