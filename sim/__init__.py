"""spikeforge.sim: the generated Verilog and the board's synthesized netlist in a real simulator (cocotb on Icarus
or Verilator), read back as a spikeforge.record.SpikeRecord for the comparison with the integer reference. No torch.
"""
