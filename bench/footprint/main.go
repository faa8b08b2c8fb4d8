// Command footprint publishes steadfast modules into a local file module
// proxy, the way a tagged release would reach `go get`, so that a fresh
// consumer's module graph can be measured without a replace directive.
//
//	go run ./footprint -proxy DIR -version v0.1.0 ROOTDIR [MODDIR ...]
//
// Each MODDIR (and ROOTDIR) is zipped with golang.org/x/mod/zip, which
// leaves out nested modules exactly as the real proxy does. Its go.mod is
// published without replace directives, and any requirement on another
// published steadfast module is set to -version.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/zip"
)

func main() {
	proxy := flag.String("proxy", "", "directory of the file module proxy to write (required)")
	version := flag.String("version", "v0.1.0", "version to publish every module at")
	flag.Parse()
	if *proxy == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	paths := map[string]bool{}
	files := map[string]*modfile.File{}
	for _, dir := range flag.Args() {
		f, err := readMod(dir)
		if err != nil {
			log.Fatal(err)
		}
		paths[f.Module.Mod.Path] = true
		files[dir] = f
	}
	for _, dir := range flag.Args() {
		if err := publish(*proxy, *version, dir, files[dir], paths); err != nil {
			log.Fatal(err)
		}
	}
}

func readMod(dir string) (*modfile.File, error) {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return nil, err
	}
	return modfile.Parse(filepath.Join(dir, "go.mod"), b, nil)
}

func publish(proxy, version, dir string, f *modfile.File, published map[string]bool) error {
	mv := module.Version{Path: f.Module.Mod.Path, Version: version}
	for _, r := range f.Replace {
		if err := f.DropReplace(r.Old.Path, r.Old.Version); err != nil {
			return err
		}
	}
	for _, r := range f.Require {
		if published[r.Mod.Path] {
			if err := f.AddRequire(r.Mod.Path, version); err != nil {
				return err
			}
		}
	}
	f.Cleanup()
	modBytes, err := f.Format()
	if err != nil {
		return err
	}
	esc, err := module.EscapePath(mv.Path)
	if err != nil {
		return err
	}
	vdir := filepath.Join(proxy, esc, "@v")
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		return err
	}
	zf, err := os.Create(filepath.Join(vdir, version+".zip"))
	if err != nil {
		return err
	}
	defer zf.Close()
	// The zip carries the same edited go.mod as the .mod file, as a tagged
	// release would.
	zfiles, err := listFiles(dir, modBytes)
	if err != nil {
		return err
	}
	if err := zip.Create(zf, mv, zfiles); err != nil {
		return fmt.Errorf("zip %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(vdir, version+".mod"), modBytes, 0o644); err != nil {
		return err
	}
	info := fmt.Sprintf(`{"Version":%q,"Time":%q}`, version, time.Now().UTC().Format(time.RFC3339))
	if err := os.WriteFile(filepath.Join(vdir, version+".info"), []byte(info), 0o644); err != nil {
		return err
	}
	list := filepath.Join(vdir, "list")
	old, _ := os.ReadFile(list)
	if !strings.Contains(string(old), version+"\n") {
		if err := os.WriteFile(list, append(old, version+"\n"...), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// listFiles walks dir the way the module zip sees it: no .git, no nested
// modules, and the given bytes in place of go.mod.
func listFiles(dir string, modBytes []byte) ([]zip.File, error) {
	var files []zip.File
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "." {
				return nil
			}
			if d.Name() == ".git" || strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir // a nested module: not part of this one
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if rel == "go.mod" {
			files = append(files, memFile{path: rel, data: modBytes})
			return nil
		}
		files = append(files, diskFile{path: rel, disk: p})
		return nil
	})
	return files, err
}

type diskFile struct{ path, disk string }

func (f diskFile) Path() string                 { return f.path }
func (f diskFile) Lstat() (os.FileInfo, error)  { return os.Lstat(f.disk) }
func (f diskFile) Open() (io.ReadCloser, error) { return os.Open(f.disk) }

type memFile struct {
	path string
	data []byte
}

func (f memFile) Path() string { return f.path }
func (f memFile) Lstat() (os.FileInfo, error) {
	return memInfo{name: filepath.Base(f.path), size: int64(len(f.data))}, nil
}
func (f memFile) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(f.data)), nil }

type memInfo struct {
	name string
	size int64
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() os.FileMode  { return 0o644 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return false }
func (i memInfo) Sys() any           { return nil }
