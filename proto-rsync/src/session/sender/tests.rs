//! Sans-io tests of the whole sender against a scripted generator.
