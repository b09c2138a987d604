"""rCM loss terms (sCM, DMD, fake score) and the update schedule; pure functions of nets and tensors."""
