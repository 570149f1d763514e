//! What the process keeps resident beyond its clients' state: the heap's thresholds and the thread
//! that hands freed memory back, and the start-up code, unmapped once slotline serves.

use std::time::Duration;

/// How often memory freed by departed clients is handed back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Free memory inside the heap worth handing back: the trimming thread's threshold. (At 4 MiB,
/// up to that much of what 10,000 departed clients left behind stayed resident, and the next
/// burst of pipelined clients started from there.)
const TRIM_ABOVE: usize = 1 << 20;
/// Free memory at the top of a heap that `free` itself gives back. It matters most for the
/// workers' arenas, whose top `malloc_trim` never returns: at 4 MiB each, a burst of large replies
/// through four workers left 5.6–8.8 MiB resident for good; at 1 MiB, 1.7–3.2. It costs the data
/// path nothing measurable: across GET and SET at -P 1, -P 16, MSET and 60 KB values (2.6 million
/// requests) it made 455 heap-resizing calls where 4 MiB made 498, and CPU per request was the same.
const TOP_TRIM_ABOVE: libc::c_int = 1 << 20;
/// Blocks this large get pages of their own, which go back to the system the moment they are freed.
const MMAP_ABOVE: libc::c_int = 256 << 10;

/// glibc's malloc keeps what a thread freed in that thread's arena, so after 10,000 clients have
/// come and gone the process would stay at its peak. A thread of its own, apart from the data
/// path's workers (a trim walks the free lists and would stall a worker and every client on it),
/// looks every few seconds and trims when the heap holds more than [`TRIM_ABOVE`] free. (mimalloc,
/// measured here, costs the same instructions per request but kept its pages resident, and its
/// start-up commit raised the idle RSS.)
///
/// The thresholds are fixed first. Left dynamic, glibc raises its mmap threshold to the size of the
/// largest block freed (up to 32 MiB) and its trim threshold to twice that: after one burst of large
/// replies, the next bursts are carved from a worker's arena, whose top `malloc_trim` never
/// returns (it trims only the main arena's top), and tens of MiB stayed resident for good.
pub fn trim() {
    // SAFETY: mallopt only sets two of glibc's process-wide tunables; it takes no pointer of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_ABOVE);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TOP_TRIM_ABOVE);
    }
    let trimmer = std::thread::Builder::new().name("slotline-trim".into());
    let _ = trimmer.spawn(|| loop {
        std::thread::sleep(TRIM_EVERY);
        // SAFETY: mallinfo2 and malloc_trim only read and shrink glibc's own heap; they take no
        // pointer of ours.
        #[allow(unsafe_code)]
        let free = unsafe { libc::mallinfo2() }.fordblks;
        if free > TRIM_ABOVE {
            #[allow(unsafe_code)]
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
}

/// Unmaps the machine code mapped so far, once every pool listens: what only start-up ran (the
/// configuration parser, the command line, the first Kubernetes and topology calls) stays out of
/// the RSS, and what the data path runs maps back in on its first use. About 2.5 of the 8 MB
/// resident at start were such code pages: the kernel maps code in runs of pages around each
/// function called.
///
/// Only private, executable, file-backed mappings are dropped: their pages are never written, so
/// the kernel maps the same bytes back from the page cache (a minor fault, no copy, no disk read
/// while the file is cached). Data and relocated read-only segments, which were written at load,
/// are left alone. (A debugger's breakpoints set in that code before this call are lost with it.)
pub fn release_startup_code() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for (start, end) in maps.lines().filter_map(code_mapping) {
        // SAFETY: the range is one whole mapping of executable code in this process (slotline's or
        // a shared library's), private, backed by a file and never written: MADV_DONTNEED only
        // drops its page-table entries, and the next instruction fetched from it faults the same
        // bytes back in from that file.
        #[allow(unsafe_code)]
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// The address range of a `/proc/self/maps` line when it maps code from a file, privately and
/// without write access ("r-xp", a path): e.g. the binary's and libc's text. None for anything
/// else (data, the stack, [vdso], anonymous memory).
fn code_mapping(line: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    let path = fields.nth(3)?;
    if perms != "r-xp" || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (start, end) = (
        usize::from_str_radix(start, 16).ok()?,
        usize::from_str_radix(end, 16).ok()?,
    );
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_code_mapped_from_a_file_is_released() {
        let code = "55cb5a51d000-55cb5adea000 r-xp 001f8000 fe:00 5515435   /usr/bin/slotline";
        assert_eq!(code_mapping(code), Some((0x55cb5a51d000, 0x55cb5adea000)));
        for other in [
            "55cb5adea000-55cb5ae36000 r--p 00ac4000 fe:00 5515435   /usr/bin/slotline",
            "55cb5ae36000-55cb5ae3a000 rw-p 00b0f000 fe:00 5515435   /usr/bin/slotline",
            "7ffd1e7f0000-7ffd1e7f2000 r-xp 00000000 00:00 0         [vdso]",
            "7f0000000000-7f0000021000 rwxp 00000000 00:00 0",
            "7f0000000000-7f0000021000 r-xs 00000000 fe:00 77        /dev/shm/x",
        ] {
            assert_eq!(code_mapping(other), None, "{other}");
        }
    }

    #[test]
    fn released_code_leaves_the_rss_and_runs_on() {
        let code_rss = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssFile:"))
                .and_then(|kb| kb.trim().trim_end_matches(" kB").parse::<u64>().ok())
        };
        let sum = |n: u64| (0..n).map(|i| i * i).sum::<u64>();
        let (before, expected) = (code_rss(), sum(1_000));
        release_startup_code();
        let after = code_rss();
        assert_eq!(sum(1_000), expected, "code runs on, mapped back in");
        assert!(
            after < before,
            "file-backed RSS {after:?} kB after the release, {before:?} kB before"
        );
    }
}
