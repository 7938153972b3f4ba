//! What the engine runs on, for reports and benchmarks: the CPU's model name and
//! vendor, the instruction-set path in use and those the CPU supports, and the number
//! of threads a call may use.

use crate::error::Result;
use crate::isa::Isa;

/// The CPU and the engine's choices on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// "AMD EPYC 7B13", "Intel(R) Xeon(R) CPU @ 2.20GHz", ...; "unknown" if not found.
    pub model_name: String,
    /// "AuthenticAMD", "GenuineIntel", ...; "unknown" if not found.
    pub vendor: String,
    /// The path the dense kernels run on (`crate::isa()`).
    pub isa: Isa,
    /// Every path this CPU can run, from the most to the least widely available.
    pub supported: Vec<Isa>,
    /// Threads per engine call: the size of rayon's pool (RAYON_NUM_THREADS, else one
    /// per core).
    pub threads: usize,
}

/// This machine's `CpuInfo`; an error if INFER_RS_ISA names a path it cannot run.
pub fn cpu_info() -> Result<CpuInfo> {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (mut model_name, mut vendor) = parse_cpuinfo(&text);
    if model_name.is_none() || vendor.is_none() {
        let (m, v) = from_cpuid();
        model_name = model_name.or(m);
        vendor = vendor.or(v);
    }
    Ok(CpuInfo {
        model_name: model_name.unwrap_or_else(|| "unknown".into()),
        vendor: vendor.unwrap_or_else(|| "unknown".into()),
        isa: crate::isa()?,
        supported: Isa::ALL.into_iter().filter(|i| i.supported()).collect(),
        threads: rayon::current_num_threads(),
    })
}

/// The first "model name" and "vendor_id" of a Linux /proc/cpuinfo.
fn parse_cpuinfo(text: &str) -> (Option<String>, Option<String>) {
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    };
    (field("model name"), field("vendor_id"))
}

/// Model name and vendor from CPUID (x86-64 without /proc/cpuinfo): the brand string
/// of leaves 0x8000_0002..=0x8000_0004, the vendor of leaf 0 (ebx, edx, ecx).
#[cfg(target_arch = "x86_64")]
fn from_cpuid() -> (Option<String>, Option<String>) {
    use std::arch::x86_64::__cpuid;
    let text = |bytes: Vec<u8>| {
        let s = String::from_utf8_lossy(&bytes)
            .trim_matches(['\0', ' '])
            .to_string();
        (!s.is_empty()).then_some(s)
    };
    // CPUID exists on every x86-64 CPU; leaves above the maximum never fault.
    let leaf0 = __cpuid(0);
    let vendor = [leaf0.ebx, leaf0.edx, leaf0.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    let brand = if __cpuid(0x8000_0000).eax >= 0x8000_0004 {
        (0x8000_0002..=0x8000_0004u32)
            .flat_map(|leaf| {
                let r = __cpuid(leaf);
                [r.eax, r.ebx, r.ecx, r.edx]
            })
            .flat_map(|r| r.to_le_bytes())
            .collect()
    } else {
        Vec::new()
    };
    (text(brand), text(vendor))
}

#[cfg(not(target_arch = "x86_64"))]
fn from_cpuid() -> (Option<String>, Option<String>) {
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_name_and_vendor_of_proc_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n";
        assert_eq!(
            parse_cpuinfo(text),
            (
                Some("Intel(R) Xeon(R) CPU @ 2.20GHz".into()),
                Some("GenuineIntel".into())
            )
        );
        assert_eq!(parse_cpuinfo("processor : 0\n"), (None, None));
    }

    #[test]
    fn reports_this_machine() {
        let info = cpu_info().unwrap();
        assert!(!info.model_name.is_empty() && !info.vendor.is_empty());
        assert!(info.supported.contains(&info.isa) && info.supported.contains(&Isa::Portable));
        assert_eq!(info.threads, rayon::current_num_threads());
        #[cfg(target_arch = "x86_64")]
        {
            let (_, vendor) = from_cpuid();
            assert_eq!(
                Some(info.vendor),
                vendor,
                "/proc/cpuinfo and CPUID disagree"
            );
        }
    }
}
