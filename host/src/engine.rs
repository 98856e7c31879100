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

    /// An engine with a pool of `instances` instances of up to 1 MiB of memory each,
    /// keeping `keep_resident` bytes of each memory slot resident.
    fn small_engine(instances: u32, keep_resident: usize) -> Engine {
        new(PoolSize {
            reservable: 1,
            instances,
            max_memory: 1 << 20,
            keep_resident,
        })
        .unwrap()
    }

    #[test]
    fn a_component_compiled_apart_runs_on_the_pooling_engine() {
        let engine = small_engine(2, 0);
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

    /// A component whose `swap(v)` returns the word at 64 KiB into its memory and stores `v`
    /// there, and whose `scatter(v)` does the same on every other 4 KiB page of its first MiB
    /// (128 pages apart from each other), returning the sum of what it found.
    const DIRTIER: &str = r#"(component
        (core module $m
            (memory 16)
            (func (export "swap") (param i32) (result i32)
                (local $old i32)
                (local.set $old (i32.load (i32.const 65536)))
                (i32.store (i32.const 65536) (local.get 0))
                (local.get $old))
            (func (export "scatter") (param i32) (result i32)
                (local $at i32) (local $sum i32)
                (loop $pages
                    (local.set $sum (i32.add (local.get $sum) (i32.load (local.get $at))))
                    (i32.store (local.get $at) (local.get 0))
                    (local.set $at (i32.add (local.get $at) (i32.const 8192)))
                    (br_if $pages (i32.lt_u (local.get $at) (i32.const 1048576))))
                (local.get $sum)))
        (core instance $i (instantiate $m))
        (func (export "swap") (param "v" u32) (result u32)
            (canon lift (core func $i "swap")))
        (func (export "scatter") (param "v" u32) (result u32)
            (canon lift (core func $i "scatter"))))"#;

    /// An engine whose pool has one instance slot, so each instance takes the last one's
    /// memory slot, keeping up to the host's default 2 MiB resident.
    fn one_slot_engine() -> (Engine, Component) {
        let engine = small_engine(1, 2 << 20);
        let component = compile(&engine, &wat::parse_str(DIRTIER).unwrap()).unwrap();
        (engine, component)
    }

    /// Calls `export(v)` in a fresh instance of `component`; `then` runs before the instance
    /// is dropped (and its memory slot reset).
    fn fresh_call(engine: &Engine, component: &Component, export: &str, v: u32, then: fn()) -> u32 {
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(1_000);
        let linker = wasmtime::component::Linker::<()>::new(engine);
        let instance = linker.instantiate(&mut store, component).unwrap();
        let f = (instance.get_typed_func::<(u32,), (u32,)>(&mut store, export)).unwrap();
        let found = f.call(&mut store, (v,)).unwrap().0;
        then();
        found
    }

    /// Kilobytes of this process swapped out.
    fn swapped_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        (status.lines())
            .find_map(|l| l.strip_prefix("VmSwap:"))
            .and_then(|kib| kib.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    }

    /// Asks the kernel to push every private writable page of this process out to swap.
    fn page_out_everything() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            if perms.starts_with("rw") {
                #[allow(unsafe_code)]
                // SAFETY: MADV_PAGEOUT only reclaims pages, whose contents come back on the
                // next access; a mapping it does not apply to is refused with an error.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT);
                }
            }
        }
    }

    /// wasmtime 48 reset a slot's dirty pages only if they were in memory: one the kernel had
    /// swapped out kept the last instance's data for the next (the carried patch in
    /// `host/vendor/wasmtime`). Needs swap to show anything: with none, the page-out does
    /// nothing and only the in-memory case is checked; `.ci/run` turns swap on and sets
    /// `JETWASM_REQUIRE_SWAP`, which makes a machine without swap fail this test.
    #[test]
    fn a_fresh_instance_never_reads_the_last_ones_memory_even_once_it_was_swapped_out() {
        let (engine, component) = one_slot_engine();
        let before = swapped_kib();
        let found = fresh_call(
            &engine,
            &component,
            "swap",
            0xdead_beef,
            page_out_everything,
        );
        assert_eq!(found, 0, "a fresh instance starts zeroed");
        let swapped = swapped_kib();
        if std::env::var_os("JETWASM_REQUIRE_SWAP").is_some() {
            assert!(swapped > before, "nothing was swapped out: is swap on?");
        } else if swapped == 0 {
            println!("no swap on this machine: only the in-memory case is checked");
        }
        let found = fresh_call(&engine, &component, "swap", 0, || {});
        assert_eq!(
            found, 0,
            "the next instance in the slot reads what the last one wrote"
        );
    }

    /// wasmtime 48's reset stopped after 32 disjoint dirty runs and decommitted the rest, so
    /// an instance that dirtied more (any interpreter's heap) had its next one fault those
    /// pages in again. Now every dirty page within `keep_resident` is reset and stays.
    #[test]
    fn scattered_dirty_pages_are_all_reset_and_stay_resident() {
        let (engine, component) = one_slot_engine();
        assert_eq!(fresh_call(&engine, &component, "scatter", 1, || {}), 0);
        let metrics = engine.pooling_allocator_metrics().unwrap();
        let resident = metrics.unused_memory_bytes_resident();
        assert!(
            resident >= 128 * 4096,
            "the idle slot keeps {resident} bytes resident, not the 128 pages it reset"
        );
        let found = fresh_call(&engine, &component, "scatter", 0, || {});
        assert_eq!(found, 0, "a page the last instance wrote was not reset");
    }

    /// Functions a module's start function takes with `ref.func` (what dynamically linked
    /// components such as componentize-py's do by the thousand) are reached through the
    /// code offsets the carried wasmtime patch caches per module and per instance.
    #[test]
    fn functions_taken_by_ref_func_at_start_run_in_every_fresh_instance() {
        let engine = small_engine(2, 0);
        let wasm = wat::parse_str(
            r#"(component
                (core module $m
                    (type $t (func (result i32)))
                    (table 2 funcref)
                    (elem declare func $eleven $thirty_one)
                    (func $eleven (result i32) i32.const 11)
                    (func $thirty_one (result i32) i32.const 31)
                    (func $start
                        (table.set (i32.const 0) (ref.func $eleven))
                        (table.set (i32.const 1) (ref.func $thirty_one)))
                    (start $start)
                    (func (export "sum") (result i32)
                        (i32.add
                            (call_indirect (type $t) (i32.const 0))
                            (call_indirect (type $t) (i32.const 1)))))
                (core instance $i (instantiate $m))
                (func (export "sum") (result u32) (canon lift (core func $i "sum"))))"#,
        )
        .unwrap();
        let component = compile(&engine, &wasm).unwrap();
        let linker = wasmtime::component::Linker::<()>::new(&engine);
        for _ in 0..3 {
            let mut store = wasmtime::Store::new(&engine, ());
            store.set_epoch_deadline(1_000);
            let instance = linker.instantiate(&mut store, &component).unwrap();
            let sum = (instance.get_typed_func::<(), (u32,)>(&mut store, "sum")).unwrap();
            assert_eq!(sum.call(&mut store, ()).unwrap().0, 42);
        }
    }
}
