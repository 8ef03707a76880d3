package vm

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
)

// cpio writes an archive in the "newc" format, the one the kernel unpacks
// into its initial root file system. Several archives concatenated are
// unpacked one after the other, which is how a test binary is laid over the
// cached base image without rewriting it.
type cpio struct {
	w   *bufio.Writer
	off int64 // bytes written, for the 4-byte alignment newc needs
	ino uint32
	err error
}

// File mode type bits as the kernel's cpio unpacker reads them.
const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

func newCPIO(w io.Writer) *cpio {
	return &cpio{w: bufio.NewWriterSize(w, 1<<20)}
}

// Dir adds a directory; parents must have been added before.
func (c *cpio) Dir(name string, perm uint32) {
	c.entry(name, modeDir|perm, 0, 0, 0, nil)
}

// File adds a regular file with the given contents.
func (c *cpio) File(name string, perm uint32, data []byte) {
	c.entry(name, modeRegular|perm, int64(len(data)), 0, 0, bytes.NewReader(data))
}

// CopyFile adds the host file src as name, streaming its contents.
func (c *cpio) CopyFile(name string, perm uint32, src string) {
	if c.err != nil {
		return
	}
	f, err := os.Open(src)
	if err != nil {
		c.err = fmt.Errorf("add %s to the initramfs: %w", src, err)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		c.err = fmt.Errorf("add %s to the initramfs: %w", src, err)
		return
	}
	c.entry(name, modeRegular|perm, st.Size(), 0, 0, f)
}

// Symlink adds name pointing at target.
func (c *cpio) Symlink(name, target string) {
	c.entry(name, modeSymlink|0o777, int64(len(target)), 0, 0, strings.NewReader(target))
}

// CharDev adds a character device node, such as /dev/console: the kernel
// opens it for init's standard streams before /init could mount devtmpfs.
func (c *cpio) CharDev(name string, perm, major, minor uint32) {
	c.entry(name, modeCharDev|perm, 0, major, minor, nil)
}

// Close writes the trailer and flushes; it returns the first error of any
// call before it.
func (c *cpio) Close() error {
	c.entry("TRAILER!!!", 0, 0, 0, 0, nil)
	if c.err != nil {
		return c.err
	}
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	return nil
}

func (c *cpio) entry(name string, mode uint32, size int64, rmajor, rminor uint32, data io.Reader) {
	if c.err != nil {
		return
	}
	name = strings.TrimPrefix(name, "/")
	c.ino++
	nlink := 1
	if mode&modeDir != 0 {
		nlink = 2
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize (with its NUL), check.
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad()
	if data != nil {
		n, err := io.Copy(c.w, data)
		if err == nil && n != size {
			err = fmt.Errorf("size changed while copying: %d bytes, expected %d", n, size)
		}
		if err != nil && c.err == nil {
			c.err = fmt.Errorf("add %s to the initramfs: %w", name, err)
		}
		c.off += n
	}
	c.pad()
}

func (c *cpio) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	if err != nil {
		c.err = fmt.Errorf("write initramfs: %w", err)
	}
}

func (c *cpio) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}
