"""The testbench top every simulation of the accelerator runs: stimulus, handshakes and trace, all in Verilog.

The same top wraps the accelerator's RTL (spikeforge.sim.rtl, in Icarus or Verilator) and a synthesized netlist of
it (spikeforge.sim.gate). Everything that happens at a clock edge is decided here, in Verilog, for two reasons:

- **One meaning of "a transfer happened".** A Verilog ``always @(posedge clk)`` block reads the ports before any
  register of the design changes at that edge, in every simulator; a cocotb coroutine woken by the same edge sees
  the values before the edge in Icarus and after it in Verilator, so a handshake sampled from Python is off by one
  cycle in one of them.
- **Speed.** Nothing in Python runs per cycle: the cocotb test (spikeforge.sim.cocotb_accel) resets the design,
  waits for ``done`` and reads the outcome, so the simulators run at their own speed.

Per image the top streams the image's pixels (read from the file named by ``+pixels=``, one hex value per line) into
``pixels`` with random valid gaps (valid, once raised, is held until the transfer; a new pixel is offered with
probability 3/4 per cycle), waits for the results, accepts them with random back-pressure (ready with probability
5/8 per cycle; up or down before the first result with probability 1/2 each), and two cycles after the last result
reads ``cycles``; then the next image begins. The random numbers come from a 32-bit xorshift seeded by ``+seed=``.

It writes one line of four integers per record to the file named by ``+trace=``:

- ``image population step neuron``: a spike event of a lif population;
- ``image population -1 count``: after an image's last result, the step_end pulses the population signalled;
- ``image -1 k value``: readout neuron k's result (signed);
- ``image -2 0 cycles``: the accelerator's ``cycles`` output for the image;
- ``image -3 code progress``: the run stopped: code 1, ``pixels__ready`` stayed low for ``+watchdog=`` cycles
  after ``progress`` pixels; 2, no result within that time after the last pixel; 3, ``results__valid`` stayed
  low after ``progress`` results; 4, an output port held X or Z (``progress``: 0 pixels__ready, 1
  results__valid, 2 results__payload, 3 cycles).

``done`` rises after the last image (``+images=``) or the stop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikeforge.netimage import Network

__all__ = ["HARNESS", "TOPLEVEL", "CLOCK_NS", "generate_harness", "write_pixels", "read_trace", "STOP_CODES"]

HARNESS = "spikeforge_tb"
TOPLEVEL = "spikeforge_accelerator"
CLOCK_NS = 10
STOP_CODES = {1: "pixels__ready stayed low for {watchdog} cycles after {progress} of {pixels} pixels were accepted",
              2: "no result within {watchdog} cycles after the last pixel",
              3: "results__valid stayed low for {watchdog} cycles after {progress} of {results} results",
              4: "output port {port} held X or Z"}
X_PORTS = ("pixels__ready", "results__valid", "results__payload", "cycles")


def lif_populations(net: Network) -> list[int]:
    return [p for p, pop in enumerate(net.populations) if pop.kind == "lif"]


def generate_harness(net: Network, build_dir: str | Path, toplevel: str = TOPLEVEL) -> Path:
    """Write ``<build_dir>/spikeforge_tb.v``: the accelerator module ``toplevel`` under test and its stimulus and
    trace (see the module's docstring). Its ports: ``rst`` and ``trace_flush`` (inputs from cocotb), ``done``,
    ``images_done``, and ``steps_p{p}`` (step_end pulses seen in the current image, per lif population)."""
    lif = lif_populations(net)
    bits = net.input.bits
    npix = net.input.size
    nres = net.readout.size
    # cocotb reaches only these through VPI: Verilator keeps them visible (public) and optimizes the rest
    public = " /*verilator public_flat_rw*/"
    ports = [f"input rst{public}", f"input trace_flush{public}", f"output reg done{public}",
             f"output reg [31:0] images_done{public}"]
    ports += [f"output reg [31:0] steps_p{p}{public}" for p in lif]
    conns = [".clk(clk)", ".rst(rst)", ".pixels__valid(pixels__valid)", ".pixels__ready(pixels__ready)",
             ".pixels__payload(pixels__payload)", ".results__valid(results__valid)",
             ".results__ready(results__ready)", ".results__payload(results__payload)", ".cycles(cycles)",
             ".busy(busy)"]
    decls, spikes, close, clear = [], [], [], []
    for p in lif:
        decls += [f"  wire valid_p{p}, end_p{p};", f"  wire [31:0] index_p{p};"]  # wider than any index port
        conns += [f".spikes_p{p}__valid(valid_p{p})", f".spikes_p{p}__index(index_p{p})",
                  f".spikes_p{p}__step_end(end_p{p})"]
        spikes += [f"      if (valid_p{p}) $fwrite(fd, \"%0d {p} %0d %0d\\n\", images_done, steps_p{p}, index_p{p});",
                   f"      if (end_p{p}) steps_p{p} = steps_p{p} + 1;"]
        close.append(f"          $fwrite(fd, \"%0d {p} -1 %0d\\n\", images_done, steps_p{p});")
        clear.append(f"          steps_p{p} = 0;")
    nl = "\n"
    text = f"""`timescale 1ns/1ps
// Generated by spikeforge.sim.harness: the accelerator under test, its stimulus and its trace.
module {HARNESS}(rst, trace_flush, done, images_done{"".join(f", steps_p{p}" for p in lif)});
{nl.join(f"  {port};" for port in ports)}
  reg pixels__valid = 1'b0;
  reg [{bits - 1}:0] pixels__payload = 0;
  reg results__ready = 1'b0;
  wire pixels__ready, results__valid, busy;
  wire [31:0] results__payload, cycles;
{nl.join(decls)}
  // the clock lives here: driven from Python through VPI it halved the simulation speed
  reg clk /*verilator public_flat_rw*/ = 1'b0;
  always #{CLOCK_NS // 2} clk = ~clk;
  {toplevel} dut({", ".join(conns)});

  integer fd, fin, images, watchdog, status;
  reg [31:0] rng;
  reg [8 * 1024 - 1:0] trace_file, pixel_file;
  initial begin
    done = 1'b0;
    images_done = 0;
{nl.join(f"    steps_p{p} = 0;" for p in lif)}
    if (!$value$plusargs("trace=%s", trace_file)) trace_file = "trace.txt";
    if (!$value$plusargs("pixels=%s", pixel_file)) pixel_file = "pixels.hex";
    if (!$value$plusargs("images=%d", images)) images = 1;
    if (!$value$plusargs("watchdog=%d", watchdog)) watchdog = 1000000;
    if (!$value$plusargs("seed=%d", rng)) rng = 1;
    rng = rng * 32'h9E3779B9 + 32'h7F4A7C15;  // no zero state for the xorshift
    if (rng == 0) rng = 1;
    fd = $fopen(trace_file, "w");
    fin = $fopen(pixel_file, "r");
  end
  always @(posedge trace_flush) $fflush(fd);

  // phase 0: pixels; 1: waiting for the first result; 2: results; 3, 4: settling before `cycles` is read
  reg [2:0] phase = 0;
  integer pixel = 0, result = 0, idle = 0, settle = 0;
  reg [31:0] value;
  task stop(input integer code, input integer progress);
    begin
{nl.join(c.replace("          ", "      ") for c in close)}
      $fwrite(fd, "%0d -3 %0d %0d\\n", images_done, code, progress);
      $fflush(fd);
      done <= 1'b1;
    end
  endtask
  task next_pixel;
    begin
      status = $fscanf(fin, "%h\\n", value);
      pixels__payload <= value[{bits - 1}:0];
    end
  endtask

  always @(posedge clk) begin
    rng = rng ^ (rng << 13);
    rng = rng ^ (rng >> 17);
    rng = rng ^ (rng << 5);
    if (rst || done || images_done >= images) begin
      if (!rst && !done && images_done >= images) begin
        $fflush(fd);
        done <= 1'b1;
      end
    end else begin
{nl.join(spikes)}
      if ((^pixels__ready) === 1'bx) stop(4, 0);
      else if ((^results__valid) === 1'bx) stop(4, 1);
      else if (results__valid && results__ready && (^results__payload) === 1'bx) stop(4, 2);
      else if (phase == 4 && (^cycles) === 1'bx) stop(4, 3);
      else case (phase)
        0: begin
          idle = idle + 1;
          if (pixels__valid && pixels__ready) begin
            pixel = pixel + 1;
            idle = 0;
          end
          if (pixel == {npix}) begin
            pixels__valid <= 1'b0;
            phase <= 1;
            results__ready <= rng[5];
          end else if (pixels__valid && !pixels__ready) begin
            // hold valid and the pixel until the transfer
          end else if (rng[1:0] != 0) begin
            next_pixel;
            pixels__valid <= 1'b1;
          end else
            pixels__valid <= 1'b0;
          if (idle > watchdog) stop(1, pixel);
        end
        1, 2: begin
          idle = idle + 1;
          if (results__valid && results__ready) begin
            $fwrite(fd, "%0d -1 %0d %0d\\n", images_done, result, $signed(results__payload));
            result = result + 1;
            idle = 0;
            phase <= 2;
          end
          if (result == {nres}) begin
            results__ready <= 1'b0;
            phase <= 3;
            settle = 0;
{nl.join(close)}
{nl.join(clear)}
          end else begin
            results__ready <= rng[4:2] < 5;
            if (idle > watchdog) stop(phase == 1 && result == 0 ? 2 : 3, result);
          end
        end
        default: begin  // `cycles` is updated when the last result is accepted: read it two cycles later
          settle = settle + 1;
          phase <= 4;
          if (settle == 2) begin
            $fwrite(fd, "%0d -2 0 %0d\\n", images_done, cycles);
            images_done <= images_done + 1;
            pixel = 0;
            result = 0;
            idle = 0;
            phase <= 0;
          end
        end
      endcase
    end
  end
endmodule
"""
    out = Path(build_dir) / f"{HARNESS}.v"
    out.write_text(text)
    return out


def write_pixels(images: np.ndarray, path: Path) -> None:
    """The pixel file the top reads: every image's pixels in C, H, W order, one hex value per line."""
    flat = np.asarray(images).reshape(-1).astype(np.int64)
    path.write_text("\n".join(f"{v:x}" for v in flat.tolist()) + "\n")


def read_trace(path: Path) -> np.ndarray:
    """The top's trace lines as an int64 array [records, 4]."""
    text = path.read_text()
    if not text.strip():
        return np.zeros((0, 4), np.int64)
    return np.array(text.split(), dtype=np.int64).reshape(-1, 4)
