//! `flannel`: the CNI plugin binary. All logic lives in `flannel_rs::cni`.

fn main() -> std::process::ExitCode {
    flannel_rs::cni::main_entry()
}
