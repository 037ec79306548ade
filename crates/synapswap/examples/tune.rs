// Quick virtual-clock driver of the planner for tuning (not the product simulator).
use std::collections::VecDeque;
use synapswap::planner::{Acquire, Command, Planner, PlannerConfig};
use synapswap::workload::{llama, DeviceModel, LlamaShape};
use synapswap::BlockSpec;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let layers: u64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(8);
    let wl = llama(
        "x",
        LlamaShape {
            layers,
            ..LlamaShape::LLAMA_8L
        },
        DeviceModel::CONSUMER,
    );
    let uses = wl.resolve().unwrap();
    let budget = wl.model_bytes() / 2 / (1 << 20) * (1 << 20);
    let bw = 4e9;
    let verify_bw = 20e9;
    let mut p = Planner::new(PlannerConfig::new(budget)).unwrap();
    let ids: Vec<_> = wl
        .blocks
        .iter()
        .map(|b| {
            p.add_block(
                BlockSpec::new(b.bytes)
                    .priority(b.priority)
                    .mutable(b.mutable),
            )
            .unwrap()
        })
        .collect();
    for (s, u) in uses.iter().enumerate() {
        for &b in u {
            p.declare(s as u64, ids[b]).unwrap();
        }
    }
    let mut now = 0.0f64;
    let mut queue: VecDeque<(synapswap::BlockId, u64, bool, bool)> = VecDeque::new(); // block, size, demand, writeback
    let mut busy_until = 0.0f64;
    let mut current: Option<(synapswap::BlockId, bool, f64, f64)> = None; // block, wb, start, end
    let mut idle = 0.0;
    fn drain(p: &mut Planner, q: &mut VecDeque<(synapswap::BlockId, u64, bool, bool)>) {
        while let Some(c) = p.poll_command() {
            match c {
                Command::Load {
                    block,
                    size,
                    demand,
                    ..
                } => {
                    if demand {
                        q.push_front((block, size, true, false))
                    } else {
                        q.push_back((block, size, false, false))
                    }
                }
                Command::WriteBack { block, size, .. } => q.push_front((block, size, true, true)),
                Command::Expedite { block } => {
                    if let Some(i) = q.iter().position(|j| j.0 == block) {
                        let j = q.remove(i).unwrap();
                        q.push_front((j.0, j.1, true, j.3));
                    }
                }
                Command::Evict { .. } => {}
            }
        }
    }
    // advance the copy engine up to time t
    let mut advance = |p: &mut Planner,
                       q: &mut VecDeque<_>,
                       t: f64,
                       now: &mut f64,
                       current: &mut Option<(synapswap::BlockId, bool, f64, f64)>,
                       busy_until: &mut f64,
                       idle: &mut f64| {
        loop {
            if current.is_none() {
                if let Some((b, size, _d, wb)) = q.pop_front() {
                    let start = busy_until.max(*now);
                    *idle += start - *busy_until;
                    let end = start + size as f64 / bw;
                    *current = Some((b, wb, start, end));
                } else {
                    return;
                }
            }
            let (b, wb, start, end) = current.unwrap();
            if end > t {
                return;
            }
            *now = end;
            *busy_until = end;
            *current = None;
            if wb {
                p.writeback_done(b, true, end - start)
            } else {
                p.transfer_done(b, true, "", end - start)
            }
            drain(p, q);
        }
    };
    let tokens = 9;
    let mut per_token = vec![];
    let mut t_start = 0.0;
    let mut used_acc = 0.0;
    let mut used_n = 0.0;
    for tok in 0..tokens {
        let b0 = p.stats().bytes_h2d;
        let t0 = now;
        for (s, u) in uses.iter().enumerate() {
            p.hint(s as u64, now);
            drain(&mut p, &mut queue);
            advance(
                &mut p,
                &mut queue,
                now,
                &mut now,
                &mut current,
                &mut busy_until,
                &mut idle,
            );
            let step_start = now;
            let mut bytes = 0;
            for &b in u {
                match p.acquire(ids[b]).unwrap() {
                    Acquire::Ready(_) => {}
                    Acquire::Pending => {
                        drain(&mut p, &mut queue);
                        loop {
                            if let Some(r) = p.poll_waiter(ids[b]) {
                                r.unwrap();
                                break;
                            }
                            let (_, _, _, end) = current
                                .or_else(|| {
                                    advance(
                                        &mut p,
                                        &mut queue,
                                        now,
                                        &mut now,
                                        &mut current,
                                        &mut busy_until,
                                        &mut idle,
                                    );
                                    current
                                })
                                .expect("something in flight");
                            let t = end;
                            advance(
                                &mut p,
                                &mut queue,
                                t,
                                &mut now,
                                &mut current,
                                &mut busy_until,
                                &mut idle,
                            );
                            now = now.max(t);
                        }
                        p.add_stall(now - step_start);
                    }
                }
                drain(&mut p, &mut queue);
                bytes += wl.blocks[b].bytes;
            }
            advance(
                &mut p,
                &mut queue,
                now,
                &mut now,
                &mut current,
                &mut busy_until,
                &mut idle,
            );
            let compute = wl.steps[s].compute_s.max(bytes as f64 / verify_bw);
            let t_end = now + compute;
            advance(
                &mut p,
                &mut queue,
                t_end,
                &mut now,
                &mut current,
                &mut busy_until,
                &mut idle,
            );
            now = t_end;
            used_acc += p.pool().used() as f64;
            used_n += 1.0;
            if tok == tokens - 1 && std::env::var("DBG").is_ok() {
                eprintln!(
                    "step {s} free {} largest {} uses {:?}",
                    p.pool().free_bytes() >> 20,
                    p.pool().largest_free() >> 20,
                    u.iter()
                        .map(|&b| wl.blocks[b].bytes >> 20)
                        .collect::<Vec<_>>()
                );
            }
            for &b in u {
                p.unhold(ids[b]);
            }
            drain(&mut p, &mut queue);
        }
        if tok == 0 {
            t_start = now;
            idle = 0.0;
        }
        per_token.push(((p.stats().bytes_h2d - b0) as f64 / 1e9, now - t0));
    }
    let m = wl.model_bytes() as f64;
    let v = budget as f64;
    let bound = (m - v) / bw;
    let timed = (now - t_start) / (tokens - 1) as f64;
    println!(
        "per token (GB, s): {:?}",
        &per_token[1..]
            .iter()
            .map(|(a, b)| (format!("{a:.3}"), format!("{b:.3}")))
            .collect::<Vec<_>>()
    );
    println!("min/token {:.3} GB, bound {:.3}s, timed {:.3}s/token, efficiency {:.3}, idle {:.3}, avg pool use {:.3}, lookahead {:.4}", (m-v)/1e9, bound, timed, bound / timed, idle, used_acc/used_n/v, p.lookahead_s());
    let st = p.stats();
    println!(
        "frag {:.3} prefetch {:?} demand {}",
        st.fragmentation, st.prefetch, st.demand_loads
    );
}
