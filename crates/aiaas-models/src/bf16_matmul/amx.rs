//! The AMX tile: `tdpbf16ps` multiplies a 16 × 32 bf16 tile of activations by a 32 × 16 tile
//! of weights (in the pair layout the packed panels already have) into 16 × 16 f32 sums — 8,192
//! multiply-adds in one instruction, about 17 times the rate of `vdpbf16ps` on this machine
//! (1.1 TFLOP/s a core measured in a register-only loop).
//!
//! Rust has no stable AMX intrinsics, so the tile is one `asm!` block that walks the inputs 16
//! pairs at a time and stores the sums. The tile registers are configured once per task
//! (`ldtilecfg` costs about as much as a small tile) by `Amx::configure`, whose value releases
//! them when dropped. Linux hands AMX state to a process only
//! after `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; `Amx::detect` asks for it once
//! and creates the token only if the CPU has the instructions and the kernel granted them.
//! This module's `unsafe`: that system call and the `asm!` blocks.
#![allow(unsafe_code)]

use std::arch::asm;
use std::arch::x86_64::__cpuid_count;
use std::sync::OnceLock;

use super::{GroupSums, PairOfPanels, GROUP_PANELS, LANES, PAIRS_PER_STEP, TILE_ROWS};

/// Proof that this CPU has AMX-BF16 and that this process may use it.
#[derive(Clone, Copy)]
pub struct Amx(());

/// `arch_prctl` requests (`asm/prctl.h`) and the tile data state component (`asm/fpu/types.h`).
const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
const XFEATURE_XTILEDATA: libc::c_ulong = 18;

impl Amx {
    pub fn detect() -> Option<Self> {
        static GRANTED: OnceLock<bool> = OnceLock::new();
        let granted = *GRANTED.get_or_init(|| {
            // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
            let features = __cpuid_count(7, 0).edx;
            let has_amx = features & (1 << 22) != 0 && features & (1 << 24) != 0;
            // SAFETY: a system call with integer arguments; it only changes which register
            // state the kernel saves for this process.
            has_amx
                && unsafe {
                    libc::syscall(
                        libc::SYS_arch_prctl,
                        ARCH_REQ_XCOMP_PERM,
                        XFEATURE_XTILEDATA,
                    )
                } == 0
        });
        granted.then_some(Self(()))
    }

    /// Loads the tile configuration, for tiles until the returned value is dropped.
    pub fn configure(self) -> ConfiguredTiles {
        let config = TileConfig::new();
        // SAFETY: `self` exists only where the CPU has AMX and the kernel granted its state;
        // the configuration is a valid palette-1 configuration that the instruction reads.
        unsafe { asm!("ldtilecfg [{config}]", config = in(reg) &config, options(nostack)) };
        ConfiguredTiles(())
    }
}

/// The tile registers configured by `Amx::configure`: no code but this type's uses AMX, so
/// the configuration holds until `drop` releases it (and on every exit, unwinding included).
pub struct ConfiguredTiles(());

impl Drop for ConfiguredTiles {
    fn drop(&mut self) {
        // SAFETY: releases the tile state this value's creator configured.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

impl ConfiguredTiles {
    /// `TILE_ROWS` activation rows (`weights.len()` pairs each, a multiple of two steps)
    /// times one group's weights into `out`.
    pub fn tile(&self, weights: &[PairOfPanels], rows: &[u32], out: &mut [GroupSums]) {
        let pairs = weights.len();
        assert!(pairs > 0 && pairs.is_multiple_of(2 * PAIRS_PER_STEP));
        assert!(rows.len() == TILE_ROWS * pairs && out.len() == TILE_ROWS);
        const { assert!(GROUP_PANELS == 2 && TILE_ROWS == 16 && PAIRS_PER_STEP == 16) };
        // Tiles: 0 and 1 hold the sums of the two panels; 2-4 and 5-7 two sets of operands
        // (activations, then each panel's weights), loaded for alternate steps so that one
        // set loads while the other's products run (tile registers are not renamed).
        // SAFETY: `self` exists only while the tiles are configured as `TileConfig` says.
        // Every tile load reads 16 rows of 64 bytes at the given stride, all inside the slices
        // checked above: activations, `TILE_ROWS` rows of `pairs` lanes, 16 pairs (64 bytes)
        // further each step; weights, 16 entries of `GROUP_PANELS × LANES` lanes a step, panel
        // p at byte 64p. The stores write 16 rows of 64 bytes into `out`'s rows, panel p at
        // byte 64p.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "2:",
                "tileloadd tmm2, [{rows} + {row_stride}*1]",
                "tileloadd tmm3, [{weights} + {weight_stride}*1]",
                "tileloadd tmm4, [{weights} + {weight_stride}*1 + 64]",
                "tileloadd tmm5, [{rows} + {row_stride}*1 + 64]",
                "tileloadd tmm6, [{weights} + {weight_stride}*1 + {step}]",
                "tileloadd tmm7, [{weights} + {weight_stride}*1 + {step} + 64]",
                "tdpbf16ps tmm0, tmm2, tmm3",
                "tdpbf16ps tmm1, tmm2, tmm4",
                "tdpbf16ps tmm0, tmm5, tmm6",
                "tdpbf16ps tmm1, tmm5, tmm7",
                "add {rows}, 128",
                "add {weights}, {step} * 2",
                "dec {steps}",
                "jnz 2b",
                "tilestored [{out} + {out_stride}*1], tmm0",
                "tilestored [{out} + {out_stride}*1 + 64], tmm1",
                rows = inout(reg) rows.as_ptr() => _,
                row_stride = in(reg) pairs * 4,
                weights = inout(reg) weights.as_ptr() => _,
                weight_stride = in(reg) size_of::<PairOfPanels>(),
                step = const PAIRS_PER_STEP * size_of::<PairOfPanels>(),
                steps = inout(reg) pairs / (2 * PAIRS_PER_STEP) => _,
                out = in(reg) out.as_mut_ptr(),
                out_stride = in(reg) size_of::<GroupSums>(),
                options(nostack),
            );
        }
    }
}

/// `ldtilecfg`'s 64-byte operand: palette 1, and for each tile register its bytes per row
/// and rows. All 8 tiles are 16 rows of 64 bytes: activations (16 rows × 16 pairs), weights
/// (16 pairs × 16 columns' pairs) and sums (16 rows × 16 columns).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn new() -> Self {
        let mut config = Self {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for tile in 0..8 {
            config.bytes_per_row[tile] = (LANES * 4) as u16;
            config.rows[tile] = 16;
        }
        config
    }
}
