//! What the engine runs on, for reports and benchmarks: the CPU's model name and
//! vendor, the size of a core's L2 cache, the instruction-set path in use and those
//! the CPU supports, and the number of threads a call may use.

use crate::error::{InferError, Result};
use crate::isa::Isa;
use std::sync::OnceLock;

/// The L2 size assumed where the system does not say: the smallest of the x86-64
/// server cores this engine was measured on (Zen 3), so the guess never overstates it.
const L2_FALLBACK_BYTES: usize = 512 << 10;

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
    /// One core's L2 cache in bytes, as the dense layers' thread split assumes it.
    pub l2_bytes: usize,
    /// Threads per engine call: the size of rayon's pool (`set_threads`, else
    /// RAYON_NUM_THREADS, else one per core).
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
        l2_bytes: l2_bytes(),
        threads: rayon::current_num_threads(),
    })
}

/// Sets the threads per engine call for the rest of the process: rayon's global pool,
/// with `n` threads. Only before the engine's first call, which otherwise sizes the pool
/// from RAYON_NUM_THREADS or the core count; afterwards only the count the pool already
/// has is accepted. For hosts that cannot set the process's environment before the
/// engine starts.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(InferError::InvalidArgument(
            "the engine needs at least one thread".into(),
        ));
    }
    match rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
    {
        Ok(()) => Ok(()),
        // the pool exists already (the usual reason), or its threads could not start
        Err(err) => match rayon::current_num_threads() {
            now if now == n => Ok(()),
            now => Err(InferError::InvalidArgument(format!(
                "cannot run the engine on {n} threads ({err}); it runs on {now}, set at its first call"
            ))),
        },
    }
}

/// One core's L2 cache in bytes: Linux's description of CPU 0's level-2 cache, else
/// L2_FALLBACK_BYTES. Read once per process.
pub(crate) fn l2_bytes() -> usize {
    static L2: OnceLock<usize> = OnceLock::new();
    *L2.get_or_init(|| {
        let caches = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
        let read = |dir: &std::path::Path, file: &str| {
            std::fs::read_to_string(dir.join(file)).unwrap_or_default()
        };
        std::fs::read_dir(caches)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|dir| {
                read(dir, "level").trim() == "2" && read(dir, "type").trim() != "Instruction"
            })
            .find_map(|dir| parse_cache_size(&read(&dir, "size")))
            .unwrap_or(L2_FALLBACK_BYTES)
    })
}

/// A sysfs cache size ("2048K", "1M", "512K") in bytes.
fn parse_cache_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let shift = match unit {
        "K" => 10,
        "M" => 20,
        _ => return None,
    };
    Some(digits.parse::<usize>().ok()? << shift)
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
    fn reads_sysfs_cache_sizes() {
        assert_eq!(parse_cache_size("2048K\n"), Some(2 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), None);
        assert_eq!(parse_cache_size("12X"), None);
        assert_eq!(parse_cache_size(""), None);
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
