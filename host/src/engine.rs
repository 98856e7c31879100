//! The wasmtime engine every component runs on: Cranelift, async calls, epoch interruption
//! driven by a 10 ms ticker, and a pooling allocator tuned for a fresh instance per message.

use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    Strategy,
};

/// How often the epoch advances; the granularity of deadlines and of yielding.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

// A call's shortest time limit must last at least one tick.
const _: () = assert!(EPOCH_TICK.as_nanos() <= crate::config::SHORTEST_TIME_LIMIT.as_nanos());

/// Most core instances one component instance may hold.
pub const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Most linear memories one component instance may hold.
pub const MEMORIES_PER_COMPONENT: u32 = 4;
/// Most tables one component instance may hold.
pub const TABLES_PER_COMPONENT: u32 = 32;
/// What an unused table slot keeps resident for its next instance, whichever component that
/// is. Tables are small (a Rust component's is a few hundred entries; an interpreter's a few
/// thousand), and keeping more made no measurable difference to a fresh Python or JavaScript
/// sandbox while it held ~30 MiB after a load of five handlers.
pub const TABLE_KEEP_RESIDENT: usize = 8 << 10;

/// Sizing of the instance pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    /// Instances components may reserve (`[runtime] max_instances`, or what they need).
    pub reservable: u32,
    /// Component instances alive at once: the reservable ones and a spare.
    pub instances: u32,
    /// The largest linear memory any handler may grow to, in bytes.
    pub max_memory: usize,
    /// Bytes of each linear memory kept resident between instances (`[runtime]
    /// keep_resident`).
    pub keep_resident: usize,
}

/// Builds the engine and starts its epoch ticker (a thread that stops with the engine).
pub fn new(pool: PoolSize) -> anyhow::Result<Engine> {
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(pool.instances)
        // Every component instance slot can hold a component of the largest shape allowed
        // (an interpreter's component holds many core instances and tables: the WASI adapter,
        // libc, the runtime's own modules), so no call fails because others took the slots;
        // unused ones cost address space only, touched when an instance uses them.
        .total_core_instances(pool.instances * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(pool.instances * MEMORIES_PER_COMPONENT)
        .total_tables(pool.instances * TABLES_PER_COMPONENT)
        .total_stacks(pool.instances)
        .max_memory_size(pool.max_memory)
        .max_component_instance_size(1 << 20)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .linear_memory_keep_resident(pool.keep_resident)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(Enabled::Yes);
    let mut config = Config::new();
    config
        .strategy(Strategy::Cranelift)
        .cranelift_opt_level(OptLevel::Speed)
        .epoch_interruption(true)
        .concurrency_support(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    let engine = Engine::new(&config)?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("jetwasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(engine)
}

/// `wasm` compiled for `engine` by a compiler of its own, as an artifact `engine` can load:
/// wasmtime keeps an engine's compiler state (its largest function's buffers, ~100 MiB after
/// an interpreter's component) for as long as the engine lives, so the engine that runs the
/// components never compiles one itself. Blocking.
pub fn precompile(engine: &Engine, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut config = engine.config().clone();
    // The same code and settings without a second instance pool (no instance runs here).
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    let artifact = Engine::new(&config)?.precompile_component(wasm)?;
    crate::heap::trim_now();
    Ok(artifact)
}

/// `wasm` compiled for `engine` (see [`precompile`]). Blocking.
pub fn compile(engine: &Engine, wasm: &[u8]) -> anyhow::Result<Component> {
    load_precompiled(engine, &precompile(engine, wasm)?)
}

/// The component `artifact` holds, copied into memory: `artifact` must come from
/// [`precompile`] for `engine`, in this process.
pub fn load_precompiled(engine: &Engine, artifact: &[u8]) -> anyhow::Result<Component> {
    #[allow(unsafe_code)]
    // SAFETY: `precompile` made the artifact for this engine's settings, in this process, and
    // wasmtime copies it before this returns, so nothing can change it meanwhile.
    let component = unsafe { Component::deserialize(engine, artifact)? };
    Ok(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_compiled_apart_runs_on_the_pooling_engine() {
        let engine = new(PoolSize {
            reservable: 1,
            instances: 2,
            max_memory: 1 << 20,
            keep_resident: 0,
        })
        .unwrap();
        let wasm = wat::parse_str(
            r#"(component
                (core module $m (func (export "f") (result i32) i32.const 42))
                (core instance $i (instantiate $m))
                (func (export "f") (result u32) (canon lift (core func $i "f"))))"#,
        )
        .unwrap();
        let component = compile(&engine, &wasm).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_epoch_deadline(1_000);
        let instance = wasmtime::component::Linker::new(&engine)
            .instantiate(&mut store, &component)
            .unwrap();
        let f = instance
            .get_typed_func::<(), (u32,)>(&mut store, "f")
            .unwrap();
        assert_eq!(f.call(&mut store, ()).unwrap().0, 42);
    }
}
