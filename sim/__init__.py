"""spikeforge.sim: the generated Verilog in a real simulator (cocotb on Icarus), read back as a
spikeforge.record.SpikeRecord for the comparison with the integer reference. No torch.
"""
