//! The AMX tile: `tdpbf16ps` multiplies a 16 × 32 bf16 tile of activations by a 32 × 16 tile
//! of weights (in the pair layout the packed panels already have) into 16 × 16 f32 sums — 8,192
//! multiply-adds in one instruction, about 17 times the rate of `vdpbf16ps` on this machine
//! (1.1 TFLOP/s a core measured in a register-only loop).
//!
//! Rust has no stable AMX intrinsics, so the tile is one `asm!` block: it configures the tile
//! registers, walks the inputs 16 pairs at a time and stores the sums, and releases the tiles
//! before it returns, so no tile state outlives it. Linux hands AMX state to a process only
//! after `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; `Amx::detect` asks for it once
//! and creates the token only if the CPU has the instructions and the kernel granted them.
//! This module's `unsafe`: that system call and the `asm!` block.
#![allow(unsafe_code)]

use std::arch::asm;
use std::arch::x86_64::__cpuid_count;
use std::sync::OnceLock;

use super::{PairOfPanels, GROUP_COLUMNS, GROUP_PANELS, LANES, PAIRS_PER_STEP, TILE_ROWS};

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

    /// `TILE_ROWS` activation rows (`weights.len()` pairs each, a multiple of `PAIRS_PER_STEP`)
    /// times one group's weights into `out`.
    pub fn tile(self, weights: &[PairOfPanels], rows: &[u32], out: &mut [[f32; GROUP_COLUMNS]]) {
        let pairs = weights.len();
        assert!(pairs > 0 && pairs.is_multiple_of(PAIRS_PER_STEP));
        assert!(rows.len() == TILE_ROWS * pairs && out.len() == TILE_ROWS);
        const { assert!(GROUP_PANELS == 3 && TILE_ROWS == 16 && PAIRS_PER_STEP == 16) };
        let config = TileConfig::new();
        // SAFETY: `self` exists only where the CPU has AMX and the kernel granted its state.
        // Every tile load reads 16 rows of 64 bytes at the given stride, all inside the slices
        // checked above: activations, `TILE_ROWS` rows of `pairs` lanes, 16 pairs (64 bytes)
        // further each step; weights, 16 entries of `GROUP_PANELS × LANES` lanes a step, panel
        // p at byte 64p. The stores write 16 rows of 64 bytes into `out`'s rows, panel p at
        // byte 64p. The block releases the tiles before it ends.
        unsafe {
            asm!(
                "ldtilecfg [{config}]",
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "2:",
                "tileloadd tmm0, [{rows} + {row_stride}*1]",
                "tileloadd tmm1, [{weights} + {weight_stride}*1]",
                "tileloadd tmm2, [{weights} + {weight_stride}*1 + 64]",
                "tileloadd tmm3, [{weights} + {weight_stride}*1 + 128]",
                "tdpbf16ps tmm4, tmm0, tmm1",
                "tdpbf16ps tmm5, tmm0, tmm2",
                "tdpbf16ps tmm6, tmm0, tmm3",
                "add {rows}, 64",
                "add {weights}, {step_bytes}",
                "dec {steps}",
                "jnz 2b",
                "tilestored [{out} + {out_stride}*1], tmm4",
                "tilestored [{out} + {out_stride}*1 + 64], tmm5",
                "tilestored [{out} + {out_stride}*1 + 128], tmm6",
                "tilerelease",
                config = in(reg) &config,
                rows = inout(reg) rows.as_ptr() => _,
                row_stride = in(reg) pairs * 4,
                weights = inout(reg) weights.as_ptr() => _,
                weight_stride = in(reg) size_of::<PairOfPanels>(),
                step_bytes = in(reg) PAIRS_PER_STEP * size_of::<PairOfPanels>(),
                steps = inout(reg) pairs / PAIRS_PER_STEP => _,
                out = in(reg) out.as_mut_ptr(),
                out_stride = in(reg) GROUP_COLUMNS * 4,
                options(nostack),
            );
        }
    }
}

/// `ldtilecfg`'s 64-byte operand: palette 1, and for each tile register its bytes per row
/// and rows. Tiles 0-6 are all 16 rows of 64 bytes: activations (16 rows × 16 pairs),
/// weights (16 pairs × 16 columns' pairs) and sums (16 rows × 16 columns).
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
        for tile in 0..7 {
            config.bytes_per_row[tile] = (LANES * 4) as u16;
            config.rows[tile] = 16;
        }
        config
    }
}
