"""mcgenref_fast.synth"""
