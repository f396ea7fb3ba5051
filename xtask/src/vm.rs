//! `cargo xtask vm`: a QEMU guest booting Debian bookworm's own kernel (6.1), for what this
//! host's kernel cannot do (IPVS: no module, no module loading). Everything comes from Debian
//! packages and is cached under `<target>/vm`; see docs/ipvs-vm.md.
//!
//! Facts behind the choices (measured on these machines): KVM does not work here, so TCG;
//! installing qemu-system-x86 with apt would remove the installed qemu-utils 10, so the 7.2
//! packages are unpacked into a private folder; the root filesystem is shared read-only over
//! virtio-9p under a tmpfs overlay, so several guests can run at once and none can spoil it.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cmd::{output, run};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What the guest needs beyond minbase: IPVS and the other fallbacks' tools, and traffic tools.
const GUEST_PACKAGES: &str = "ipvsadm,iproute2,iptables,nftables,kmod,procps,conntrack,python3,\
                              curl,apache2-utils,wrk,nginx-light";
/// Host libraries the unpacked qemu-system-x86_64 links against; plain apt installs here.
const HOST_PACKAGES: &[&str] = &[
    "debootstrap",
    "busybox-static",
    "libcapstone4",
    "libfdt1",
    "libslirp0",
    "libaio1",
    "libpmem1",
    "librdmacm1",
    "libibverbs1",
    "libvdeplug2",
    "libnuma1",
    "liburing2",
    "libpixman-1-0",
    "libfuse3-3",
    "libbpf1",
];
/// qemu-system-common carries TCG itself, as a loadable module (accel-tcg-x86_64.so).
const QEMU_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
    "ipxe-qemu",
];
/// Modules the initramfs loads to reach the 9p shares and build the overlay; their
/// dependencies are resolved from the kernel's modules.dep.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

pub struct Vm {
    cache: PathBuf,
    /// Where cargo puts host builds, mounted in the guest at /mnt/target.
    target: PathBuf,
    root: PathBuf,
}

fn step<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    let out = f().with_context(|| format!("vm: {name}"))?;
    eprintln!("vm: {name}: {:.1} s", start.elapsed().as_secs_f64());
    Ok(out)
}

impl Vm {
    pub fn new(root: &Path) -> Self {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let cache = std::env::var_os("SLUICE_VM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("vm"));
        Self {
            cache,
            target,
            root: root.to_path_buf(),
        }
    }

    fn qemu_dir(&self) -> PathBuf {
        self.cache.join("qemu")
    }
    fn kernel_dir(&self) -> PathBuf {
        self.cache.join("kernel")
    }
    fn rootfs(&self) -> PathBuf {
        self.cache.join("rootfs")
    }
    fn initramfs(&self) -> PathBuf {
        self.cache.join("initramfs.cpio")
    }
    fn vmlinux(&self) -> PathBuf {
        self.cache.join("vmlinux")
    }

    /// The uncompressed kernel boots straight into 64-bit code through its PVH entry point,
    /// skipping the bzImage's real-mode setup and decompression, which cost seconds under TCG
    /// (boot to command: ~9 s with vmlinuz, 5-7 s with vmlinux, measured here).
    fn extract_vmlinux(&self) -> anyhow::Result<()> {
        let release = self.kernel_release()?;
        let image = fs::read(self.kernel_dir().join(format!("boot/vmlinuz-{release}")))?;
        // Debian compresses its bookworm kernels with xz; the payload starts at its magic.
        let magic = b"\xfd7zXZ\x00";
        let at = image
            .windows(magic.len())
            .position(|w| w == magic)
            .context("no xz payload in vmlinuz")?;
        let elf = unxz(&image[at..])?;
        if !elf.starts_with(b"\x7fELF") {
            bail!("the xz payload of vmlinuz is not an ELF kernel");
        }
        let tmp = self.vmlinux().with_extension("tmp");
        fs::write(&tmp, elf)?;
        fs::rename(&tmp, self.vmlinux())?;
        Ok(())
    }

    /// Builds whatever is missing; each piece is renamed into place only once complete, so an
    /// interrupted build is redone rather than trusted.
    pub fn build(&self) -> anyhow::Result<()> {
        sluice_testbed::require_root();
        let start = Instant::now();
        fs::create_dir_all(&self.cache)?;
        step("host packages", || self.host_packages())?;
        if !self.qemu_modules().join("accel-tcg-x86_64.so").exists() {
            let _ = fs::remove_dir_all(self.qemu_dir());
            step("qemu (unpacked Debian 7.2 packages)", || {
                self.unpack(QEMU_PACKAGES, &self.qemu_dir())
            })?;
        }
        if !self.kernel_dir().exists() {
            step("kernel (Debian package)", || {
                let image = kernel_package()?;
                self.unpack(&[&image], &self.kernel_dir())
            })?;
        }
        if !self.rootfs().exists() {
            step("root filesystem (debootstrap)", || self.build_rootfs())?;
        }
        if !self.vmlinux().exists() {
            step("vmlinux (from vmlinuz)", || self.extract_vmlinux())?;
        }
        if !self.initramfs().exists() {
            step("initramfs", || self.build_initramfs())?;
        }
        eprintln!(
            "vm: ready in {} ({:.1} s)",
            self.cache.display(),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn host_packages(&self) -> anyhow::Result<()> {
        let missing: Vec<&str> = HOST_PACKAGES
            .iter()
            .copied()
            .filter(|p| {
                !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                    .is_ok_and(|s| s.contains("install ok installed"))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing))
    }

    /// `apt-get download` + `dpkg -x`: the packages' files without installing them.
    fn unpack(&self, packages: &[&str], dest: &Path) -> anyhow::Result<()> {
        let debs = self.cache.join("debs");
        fs::create_dir_all(&debs)?;
        run(Command::new("apt-get")
            .current_dir(&debs)
            .arg("download")
            .args(packages))?;
        let tmp = dest.with_extension("tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        for package in packages {
            let deb = newest_deb(&debs, package)?;
            run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
        }
        fs::rename(&tmp, dest)?;
        Ok(())
    }

    fn kernel_release(&self) -> anyhow::Result<String> {
        let modules = self.kernel_dir().join("lib/modules");
        let release = fs::read_dir(&modules)
            .with_context(|| format!("reading {}", modules.display()))?
            .next()
            .context("no kernel modules")??
            .file_name();
        Ok(release.to_string_lossy().into_owned())
    }

    fn build_rootfs(&self) -> anyhow::Result<()> {
        let tmp = self.cache.join("rootfs.tmp");
        // debootstrap is the long part (downloads); an interruption after it keeps its result.
        let bootstrapped = self.cache.join("rootfs.debootstrapped");
        if !bootstrapped.exists() {
            let _ = fs::remove_dir_all(&tmp);
            run(Command::new("debootstrap")
                .arg("--variant=minbase")
                .arg(format!("--include={GUEST_PACKAGES}"))
                .arg(SUITE)
                .arg(&tmp)
                .arg(MIRROR))?;
            fs::write(&bootstrapped, "")?;
        }
        // Copy only the modules: unpacking the kernel package onto a merged-/usr root would
        // replace the /lib symlink with a directory.
        let release = self.kernel_release()?;
        let dest = tmp.join("usr/lib/modules");
        fs::create_dir_all(&dest)?;
        run(Command::new("cp")
            .arg("-a")
            .arg(self.kernel_dir().join("lib/modules").join(&release))
            .arg(&dest))?;
        run(Command::new("chroot").arg(&tmp).args(["depmod", &release]))?;
        // Mount points for the shares; the root is read-only in the guest.
        for dir in ["job", "src", "mnt/target"] {
            fs::create_dir_all(tmp.join(dir))?;
        }
        let _ = fs::remove_file(tmp.join("etc/hostname"));
        fs::write(tmp.join("etc/hostname"), "sluice-vm\n")?;
        fs::rename(&tmp, self.rootfs())?;
        fs::remove_file(bootstrapped)?;
        Ok(())
    }

    fn build_initramfs(&self) -> anyhow::Result<()> {
        let release = self.kernel_release()?;
        // The package ships no modules.dep; the root filesystem's depmod made one.
        let modules = self.rootfs().join("usr/lib/modules").join(&release);
        let order = module_order(&fs::read_to_string(modules.join("modules.dep"))?)?;
        let mut cpio = Cpio::default();
        for dir in [
            "bin", "dev", "proc", "sys", "ro", "rw", "newroot", "modules",
        ] {
            cpio.dir(dir);
        }
        cpio.file("bin/busybox", 0o755, &fs::read("/bin/busybox")?);
        let mut load = String::new();
        for path in &order {
            let name = Path::new(path).file_name().unwrap().to_string_lossy();
            let data = fs::read(modules.join(path))?;
            let data = if let Some(stem) = name.strip_suffix(".xz") {
                load.push_str(&format!("insmod /modules/{stem}\n"));
                unxz(&data)?
            } else {
                load.push_str(&format!("insmod /modules/{name}\n"));
                data
            };
            let stem = name.trim_end_matches(".xz");
            cpio.file(&format!("modules/{stem}"), 0o644, &data);
        }
        cpio.file("init", 0o755, INIT.replace("@MODULES@", &load).as_bytes());
        let tmp = self.initramfs().with_extension("tmp");
        fs::write(&tmp, cpio.finish())?;
        fs::rename(&tmp, self.initramfs())?;
        Ok(())
    }

    fn qemu_modules(&self) -> PathBuf {
        self.qemu_dir().join("usr/lib/x86_64-linux-gnu/qemu")
    }

    fn qemu(&self) -> PathBuf {
        self.qemu_dir().join("usr/bin/qemu-system-x86_64")
    }

    /// Boots the guest, runs `command` there as root and returns its exit code. Its output goes
    /// to the guest's serial console, which is this process's stdout.
    pub fn run(&self, command: &[String], timeout: Duration) -> anyhow::Result<i32> {
        if command.is_empty() {
            bail!("vm run: no command given");
        }
        self.build()?;
        let kernel = self.vmlinux();
        let jobs = self.cache.join("jobs");
        let job = jobs.join(format!("{}", std::process::id()));
        let _ = fs::remove_dir_all(&job);
        fs::create_dir_all(&job)?;
        let mut script = String::from("#!/bin/sh\n");
        script.push_str(
            &command
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );
        script.push('\n');
        fs::write(job.join("command"), script)?;
        fs::create_dir_all(&self.target)?;

        let share = |path: &Path, tag: &str, ro: bool| {
            format!(
                "local,path={},mount_tag={tag},security_model=none{}",
                path.display(),
                if ro { ",readonly=on" } else { "" }
            )
        };
        let share_dir = self.qemu_dir().join("usr/share");
        let mut qemu = Command::new(self.qemu());
        qemu.env("QEMU_MODULE_DIR", self.qemu_modules());
        qemu.args(["-L"])
            .arg(share_dir.join("qemu"))
            .arg("-L")
            .arg(share_dir.join("seabios"))
            .arg("-L")
            .arg(share_dir.join("ipxe/qemu"))
            // Deterministic virtual time: the guest's clock counts emulated instructions, so
            // timings inside do not depend on how busy the shared host is.
            .args([
                "-accel",
                "tcg,thread=single",
                "-icount",
                "shift=0,sleep=off",
            ])
            .args(["-m", "1024", "-smp", "1", "-cpu", "max"])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .args(["-no-reboot", "-nodefaults"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(self.initramfs())
            .args([
                "-append",
                "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init",
            ])
            .arg("-virtfs")
            .arg(share(&self.rootfs(), "rootfs", true))
            .arg("-virtfs")
            .arg(share(&job, "job", false))
            .arg("-virtfs")
            .arg(share(&self.root, "src", true))
            .arg("-virtfs")
            .arg(share(&self.target, "target", true));
        let start = Instant::now();
        let mut child = qemu.spawn().context("starting qemu")?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!("vm run: guest still running after {timeout:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let elapsed = start.elapsed().as_secs_f64();
        let exit = fs::read_to_string(job.join("exit"));
        let _ = fs::remove_dir_all(&job);
        if !status.success() {
            bail!("qemu failed ({status})");
        }
        let code = exit
            .context("the guest left no exit code (did it crash?)")?
            .trim()
            .parse()
            .context("parsing the guest's exit code")?;
        eprintln!("vm: guest ran for {elapsed:.1} s, command exited {code}");
        Ok(code)
    }
}

impl Vm {
    /// One boot runs every guest check (booting costs more than the checks themselves).
    pub fn test(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        let code = self.run(
            &["sh".into(), "/src/tests/vm/all.sh".into()],
            Duration::from_secs(900),
        )?;
        eprintln!(
            "vm test: {:.1} s in all, exit {code}",
            start.elapsed().as_secs_f64()
        );
        if code != 0 {
            bail!("vm test: the guest's checks failed (exit {code})");
        }
        Ok(())
    }
}

/// The initramfs's init: load the 9p and overlay modules, build the root from the read-only
/// share under a tmpfs overlay, mount the other shares, and hand over to the job.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
@MODULES@
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $opts,ro,cache=loose rootfs /ro || exec sh
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || exec sh
mount -t 9p -o $opts job /newroot/job
mount -t 9p -o $opts,ro src /newroot/src
mount -t 9p -o $opts,ro target /newroot/mnt/target
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh -c '
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
  mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
  mkdir -p /sys/fs/bpf /run/netns; mount -t bpf bpf /sys/fs/bpf 2>/dev/null
  stty -onlcr 2>/dev/null
  cd /root
  /bin/sh /job/command
  echo $? > /job/exit
  sync
  echo o > /proc/sysrq-trigger
  sleep 10'
"#;

fn kernel_package() -> anyhow::Result<String> {
    let deps = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .context("linux-image-amd64 depends on no linux-image package")
}

fn newest_deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("{package}: no .deb in {}", dir.display()))
}

fn unxz(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("xz")
        // The xz stream is followed by other data in vmlinuz.
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // Feed from another thread: the output (tens of MB) would fill the pipe and block xz
    // while this thread still writes its input.
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    // xz stops reading after the first stream; the pipe then breaks, which is fine.
    let _ = feeder.join();
    if !out.status.success() {
        bail!("xz -d failed");
    }
    Ok(out.stdout)
}

/// The modules to load, dependencies first, from modules.dep's `path: dep dep...` lines.
fn module_order(modules_dep: &str) -> anyhow::Result<Vec<String>> {
    let deps: Vec<(&str, Vec<&str>)> = modules_dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    let find = |name: &str| {
        deps.iter()
            .find(|(path, _)| module_name(path) == name.replace('-', "_"))
            .with_context(|| format!("module {name} is not in modules.dep"))
    };
    let mut order = Vec::new();
    for want in INITRAMFS_MODULES {
        let (path, needs) = find(want)?;
        // modules.dep lists the full closure, deepest dependency last.
        for dep in needs.iter().rev().chain(std::iter::once(path)) {
            if !order.iter().any(|o: &String| o == dep) {
                order.push((*dep).to_owned());
            }
        }
    }
    Ok(order)
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split('.').next().unwrap_or(file);
    stem.replace('-', "_")
}

fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// A newc cpio archive, which is all the kernel needs for an initramfs (no compression).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }
    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }
    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_dependencies_first() {
        let dep = "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n\
                   kernel/net/9p/9pnet.ko:\n\
                   kernel/fs/netfs/netfs.ko:\n\
                   kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko\n\
                   kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
                   kernel/fs/overlayfs/overlay.ko:\n";
        let order = module_order(dep).unwrap();
        let pos = |m: &str| order.iter().position(|o| o.ends_with(m)).unwrap();
        assert!(pos("virtio_pci_modern_dev.ko") < pos("virtio_pci.ko"));
        assert!(pos("/9pnet.ko") < pos("9pnet_virtio.ko"));
        assert!(pos("netfs.ko") < pos("/9p.ko"));
        assert_eq!(order.len(), 7);
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
